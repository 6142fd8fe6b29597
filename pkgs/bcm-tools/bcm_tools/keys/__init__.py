"""Key derivation and encodings: BIP-32/SLIP-0010, SLIP-0013, bech32, descriptors (BIP-380)."""
