"""Response SLAs: the rules, the timer check and escalation."""
