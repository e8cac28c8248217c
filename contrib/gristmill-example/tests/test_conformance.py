"""gristmill's conformance kit over this plugin's components: each check of each, one test."""

from gristmill.testing import conformance

test_conformance = conformance("example")
