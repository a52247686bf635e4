"""The fault suite: see tests/faultreport.py (the fault_report fixture and the table)."""
