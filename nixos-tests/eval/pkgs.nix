# A stand-in for nixpkgs' `pkgs`, just large enough to evaluate the bcm modules without
# nixpkgs. Rendered files are written with builtins.toFile into the harness's private store, so
# their store paths carry string context: the harness finds every file the modules render by
# following that context and reads it back to check values and scan for secrets.
# Package stand-ins have an all-zero hash and no context, so they are never mistaken for files.
{ lib }:
let
  stubHash = "00000000000000000000000000000000";

  mkPackage =
    pname: extra:
    {
      type = "derivation";
      name = "${pname}-stub";
      inherit pname;
      version = "0-stub";
      outPath = "/nix/store/${stubHash}-${pname}";
      meta.mainProgram = extra.mainProgram or pname;
      passthru = { };
    }
    // removeAttrs extra [ "mainProgram" ];

  writeText = name: text: builtins.toFile name text;

  writeShellScript = name: text: writeText name "#!/bin/sh\n${text}";

  mkBinPackage = name: file: {
    type = "derivation";
    inherit name;
    outPath = file;
    meta.mainProgram = name;
  };

  writeShellScriptBin = name: text: mkBinPackage name (writeShellScript name text);

  writeShellApplication =
    {
      name,
      text,
      runtimeInputs ? [ ],
      ...
    }:
    writeShellScriptBin name ''
      export PATH=${lib.makeBinPath runtimeInputs}:$PATH
      ${text}
    '';

  atom = lib.types.oneOf [
    lib.types.bool
    lib.types.int
    lib.types.float
    lib.types.str
    lib.types.path
  ];
  atomOrList = lib.types.nullOr (lib.types.either atom (lib.types.listOf atom));

  formats = {
    keyValue =
      {
        mkKeyValue ? lib.generators.mkKeyValueDefault { } "=",
        listsAsDuplicateKeys ? false,
        ...
      }:
      {
        type = lib.types.attrsOf atomOrList;
        generate = name: value: writeText name (lib.generators.toKeyValue { inherit mkKeyValue listsAsDuplicateKeys; } value);
      };

    ini =
      {
        listsAsDuplicateKeys ? false,
        ...
      }@args:
      {
        type = lib.types.attrsOf (lib.types.attrsOf atomOrList);
        generate =
          name: value:
          writeText name (
            lib.generators.toINI (removeAttrs args [
              "listToValue"
              "atomsCoercedToLists"
            ]) value
          );
      };

    iniWithGlobalSection =
      {
        listsAsDuplicateKeys ? false,
        ...
      }@args:
      {
        type = lib.types.submodule {
          options.globalSection = lib.mkOption {
            type = lib.types.attrsOf atomOrList;
            default = { };
          };
          options.sections = lib.mkOption {
            type = lib.types.attrsOf (lib.types.attrsOf atomOrList);
            default = { };
          };
        };
        generate =
          name: value:
          writeText name (
            lib.generators.toINIWithGlobalSection (removeAttrs args [
              "listToValue"
              "atomsCoercedToLists"
            ]) value
          );
      };

    javaProperties =
      { ... }:
      {
        type = lib.types.attrsOf lib.types.str;
        generate = name: value: writeText name (lib.generators.toKeyValue { } value);
      };

    json =
      { }:
      {
        type = lib.types.anything;
        generate = name: value: writeText name (builtins.toJSON value);
      };
  };

  jre = mkPackage "jre" { mainProgram = "java"; };
in
{
  inherit
    writeText
    writeShellScript
    writeShellScriptBin
    writeShellApplication
    formats
    jre
    ;
  writeScript = name: text: writeText name text;
  system = "x86_64-linux";
  stdenv.hostPlatform.system = "x86_64-linux";

  bitcoind = mkPackage "bitcoind" { };
  fulcrum = mkPackage "fulcrum" { mainProgram = "Fulcrum"; };
  lnd = mkPackage "lnd" { };
  lndinit = mkPackage "lndinit" { };
  # nixpkgs sets mainProgram to the wallet; the module names bin/monerod explicitly.
  monero-cli = mkPackage "monero-cli" { mainProgram = "monero-wallet-cli"; };
  tor = mkPackage "tor" { };
  apacheKafka = mkPackage "apache-kafka" { passthru.jre = jre; };
  coreutils = mkPackage "coreutils" { mainProgram = "ls"; };
  openssl = mkPackage "openssl" { };
  age = mkPackage "age" { };
  jq = mkPackage "jq" { };
  curl = mkPackage "curl" { };
  systemd = mkPackage "systemd" { mainProgram = "systemctl"; };
  bash = mkPackage "bash" { };
  gnugrep = mkPackage "gnugrep" { mainProgram = "grep"; };
  gnused = mkPackage "gnused" { mainProgram = "sed"; };
  util-linux = mkPackage "util-linux" { mainProgram = "runuser"; };
}
