"""Booking: the lead books the first meeting with its owner, right after routing.

``rules`` (``rules/booking.yaml``), ``tokens`` (signed links), ``slots`` (what is offered,
pure), ``store`` (reads and links), ``book`` (the writes), ``messages`` (ICS and emails,
pure), ``invites`` (the links routing's notices carry: ``RouteContext.links``), ``service``
(what ``leadflow serve``'s pages call). The reps' CalDAV calendars are ``leadflow.calendars``
(the outbox writes to them too). See docs/booking.md.
"""
