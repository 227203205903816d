"""The CPU reference backend: plain-torch paged attention, the oracle for every other one."""
