"""Load generator and benchmarks for UtuVox: ``python -m bench <scenario>``."""
