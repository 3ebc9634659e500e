"""Provision samdrop in a Google Cloud project (``samdrop deploy``) and take it down (``samdrop destroy``).

A deployment is an ordered list of :class:`deploy.gcp.plan.Step` objects built from validated
options; ``--dry-run`` prints them, a real run executes the very same objects.
"""
