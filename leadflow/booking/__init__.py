"""Booking: the lead books the first meeting with its owner, right after routing.

``rules`` (``rules/booking.yaml``), ``tokens`` (signed links), ``slots`` (what is offered,
pure), ``calendars`` (the reps' CalDAV calendars), ``store`` (reads and links), ``book`` (the
writes), ``messages`` (ICS and emails, pure), ``service`` (what ``leadflow serve``'s pages
call). See docs/booking.md.
"""
