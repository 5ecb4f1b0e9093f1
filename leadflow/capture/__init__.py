"""Capture hop: records as received -> mapped, normalised, gated, de-duplicated leads.

Read in this order, one concern per module:

- ``mapping``: a chunk's records mapped to candidate lead rows (``prepare_records``, pure);
- ``identity``: which lead each record belongs to and the merged values (``plan_merge``, pure);
- ``prepare``: a chunk prepared without the database, optionally in worker processes;
- ``write``: one chunk written in one transaction; batches, raw bytes, quarantine, cursors;
- ``units``: the ``@task`` units; ``run``: a capture run's batches, composed by the flow;
- ``release``: quarantined records fed through the hop again (``leadflow quarantine release``).

One ingest of a given input runs at a time (``leadflow.capture.locks``); a batch left
``running`` by a dead run is resumed after its last committed chunk by the next ingest.

A *batch* is one received input (a file or an API page); it is read in bounded *chunks*,
each gated and written in one transaction. Accounting, for every chunk and so for every
batch: received = inserted + merged + quarantined. A record that creates a lead is
*inserted*; a record that lands on a lead that already exists (in the store or earlier in
the chunk) is *merged*; a record the gate refuses is *quarantined*.
"""
