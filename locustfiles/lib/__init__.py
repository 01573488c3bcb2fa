"""Library code for the locustfiles: users, the gevent/asyncio bridge, shapes, options and recorder.

A subpackage, because ``locust -f locustfiles/`` imports every top-level ``.py`` file as a locustfile.
"""
