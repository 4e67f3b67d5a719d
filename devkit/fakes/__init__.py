"""Test doubles and tooling: loopback fakes of providers, payload builders, simulated users.

Product modules never import this package (an import-linter contract says so); ``devkit.stack``
(``parley dev``/``demo``) and the tests do.
"""
