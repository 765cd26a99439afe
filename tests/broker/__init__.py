"""Tests of broker/ and the wire contracts in schema/."""
