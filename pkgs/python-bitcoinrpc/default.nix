# python-bitcoinrpc (bitcoinrpc.authproxy), the JSON-RPC client bcm-tools speaks to bitcoind
# with. nixpkgs' `bitcoinrpc` is a different, asynchronous client of the same import name.
{
  lib,
  buildPythonPackage,
  fetchPypi,
  setuptools,
}:
buildPythonPackage rec {
  pname = "python-bitcoinrpc";
  version = "1.0";
  pyproject = true;

  src = fetchPypi {
    inherit pname version;
    # sha256 of python-bitcoinrpc-1.0.tar.gz as served by PyPI.
    hash = "sha256-pqbzVnJjUWO8SRwl/ilSC90GPe2+2js3v1vpeqA4xuc=";
  };

  # Its setup.py imports distutils, which setuptools provides on Pythons without it.
  build-system = [ setuptools ];

  pythonImportsCheck = [ "bitcoinrpc.authproxy" ];

  meta = {
    description = "JSON-RPC client for bitcoind (AuthServiceProxy)";
    homepage = "https://github.com/jgarzik/python-bitcoinrpc";
    license = lib.licenses.lgpl21Plus;
  };
}
