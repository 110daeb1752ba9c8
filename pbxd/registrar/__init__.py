"""Registrar: digest challenges and checks, brute-force guard, bindings, phones."""
