"""The rule language shared by every rules file: conditions (``conditions.py``) and amounts
of time and time zones (``units.py``). Each concern's own schema imports from here, never
from another concern's rules."""
