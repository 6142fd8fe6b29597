# bcm-tools, built from the same pyproject.toml that `pip install` reads.
{
  lib,
  python3Packages,
  age,
  openssh,
}:
python3Packages.buildPythonApplication {
  pname = "bcm-tools";
  version = "0.1.0";
  pyproject = true;

  src = lib.fileset.toSource {
    root = ./.;
    fileset = lib.fileset.unions [
      ./pyproject.toml
      ./README.md
      ./bcm_tools
      ./tests
    ];
  };

  build-system = [ python3Packages.setuptools ];

  dependencies = with python3Packages; [
    click
    pydantic
    jinja2
    trezor
    mnemonic
    cryptography
    python-bitcoinrpc
  ];

  # The CLI shells out to these; put them on its PATH.
  makeWrapperArgs = [
    "--prefix PATH : ${
      lib.makeBinPath [
        age
        openssh
      ]
    }"
  ];

  nativeCheckInputs = with python3Packages; [
    pytestCheckHook
    hypothesis
  ];
  # Tests that start daemons need them on loopback; the VM tests cover those under Nix.
  disabledTestMarks = [
    "lnd"
    "btcd"
    "monerod"
    "kafka"
    "tor"
    "lxd"
    "nix"
  ];

  meta = {
    description = "Operator toolkit for the bcm NixOS modules";
    license = lib.licenses.mit;
    mainProgram = "bcm-tools";
  };
}
