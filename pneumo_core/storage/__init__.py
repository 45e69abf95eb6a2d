"""Object storage: a local folder (file://) and S3-compatible storage (s3://) behind one interface,
with leases and temp-file sweeping.
"""
