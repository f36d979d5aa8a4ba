"""Evidence for auditors: the bundle a sealed session exports (bundle.py) and the standalone
verifier shipped inside it (verify.py: standard library + `cryptography`, no Lucid import)."""
