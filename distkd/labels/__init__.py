"""Soft labels as values: how a teacher's outputs are stored (``formats``), combined (``ensemble``) and which
augmented views they were made on (``views``). Below ``specs`` and every stage, which all read them."""
