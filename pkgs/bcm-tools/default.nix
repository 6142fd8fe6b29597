# bcm-tools, built from the same pyproject.toml that `pip install` reads.
{
  lib,
  python3Packages,
  age,
  openssh,
  lnd,
  runCommand,
}:
let
  # LND's gRPC stubs, generated from the .proto files of the LND the node runs (never committed);
  # bcm_tools.lnd finds them through BCM_LND_STUBS.
  lndStubs =
    runCommand "lnd-grpc-stubs-${lnd.version}"
      { nativeBuildInputs = [ (python3Packages.python.withPackages (ps: [ ps.grpcio-tools ])) ]; }
      ''
        mkdir -p $out
        python -m grpc_tools.protoc -I ${lnd.src}/lnrpc --python_out=$out --grpc_python_out=$out \
          lightning.proto walletunlocker.proto stateservice.proto routerrpc/router.proto
      '';
  # Not in nixpkgs (its `bitcoinrpc` is another client); packaged beside bcm-tools.
  python-bitcoinrpc = python3Packages.callPackage ../python-bitcoinrpc { };
  # `exporter` serves Prometheus metrics; `connect` prints QR codes.
  operatorViewDeps = with python3Packages; [
    prometheus-client
    segno
  ];
in
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

  dependencies = [ python-bitcoinrpc ] ++ operatorViewDeps ++ (with python3Packages; [
    click
    pydantic
    jinja2
    tomlkit
    trezor
    slip10
    mnemonic
    cryptography
    grpcio
    protobuf
    confluent-kafka
    pyzmq
    pylxd
  ]);

  # The CLI shells out to these; put them on its PATH.
  makeWrapperArgs = [
    "--set-default BCM_LND_STUBS ${lndStubs}"
    "--prefix PATH : ${
      lib.makeBinPath [
        age
        openssh
      ]
    }"
  ];

  nativeCheckInputs =
    (with python3Packages; [
      pytestCheckHook
      hypothesis
      tomli-w
      libagent
    ])
    # The secrets tests run the real age CLI and ssh-keygen.
    ++ [
      age
      openssh
    ];
  # Tests that start daemons (LND, btcd, Tor, monerod, LXD), need nix-instantiate or read files
  # outside this source cannot run in the build sandbox; scripts/test runs them. The VM tests
  # (nixos-tests/) run bcm-tools on their nodes: lnd rollback, backup verify, trezor watch-only.
  disabledTestMarks = [
    "lnd"
    "btcd"
    "monerod"
    "kafka"
    "tor"
    "prometheus"
    "nix"
    "repo"
    "lxd"
  ];

  passthru = { inherit lndStubs; };

  meta = {
    description = "Operator toolkit for the bcm NixOS modules";
    license = lib.licenses.mit;
    mainProgram = "bcm-tools";
  };
}
