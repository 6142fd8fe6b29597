# A stand-in for nixpkgs' `pkgs`, just large enough to evaluate the bcm modules without
# nixpkgs. Rendered files are written with builtins.toFile into the harness's private store, so
# their store paths carry string context: the harness finds every file the modules render by
# following that context and reads it back to check values and scan for secrets.
# Package stand-ins have an all-zero hash and no context, so they are never mistaken for files.
#
# The writers and formats below produce the text nixpkgs' builders write (the files each one
# mirrors are named next to it); what a builder checks at build time, the harness checks after
# evaluation (`run` parses every shell script with bash -n).
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

  # pkgs/top-level/all-packages.nix: runtimeShell = "${bash}${bash.shellPath}".
  bash = mkPackage "bash" { shellPath = "/bin/bash"; };
  runtimeShell = "${bash.outPath}${bash.shellPath}";

  writeText = name: text: builtins.toFile name text;

  # pkgs/build-support/trivial-builders/default.nix. writeShellScript and writeShellScriptBin
  # write "#!${runtimeShell}\n${text}\n" and run `bash -n -O extglob` on it (stdenv.shellDryRun)
  # in their checkPhase; nixos-tests/eval/run does that for every rendered file starting with
  # this shebang.
  shellScriptText = text: "#!${runtimeShell}\n${text}\n";

  writeShellScript = name: text: writeText name (shellScriptText text);

  # Simplified: nixpkgs puts the script at $out/bin/<name>; builtins.toFile cannot make a
  # directory, so the package's outPath is the script itself and lib.getExe appends /bin/<name>
  # to it. The string context, which is what the harness follows, names the script.
  mkScriptBin =
    {
      name,
      binName,
      text,
    }:
    {
      type = "derivation";
      inherit name;
      outPath = writeText name text;
      meta.mainProgram = binName;
      # Only the derivation name is overridable (nixos/lib/systemd-lib.nix makeJobScript renames
      # unit scripts to unit-script-<name>).
      overrideAttrs =
        f:
        mkScriptBin {
          inherit binName text;
          name = (f { inherit name; }).name or name;
        };
    };

  writeShellScriptBin =
    name: text:
    mkScriptBin {
      inherit name;
      binName = name;
      text = shellScriptText text;
    };

  # trivial-builders/default.nix writeShellApplication: set -o for each bashOptions entry,
  # runtimeEnv exported, PATH from runtimeInputs, then the text; its checkPhase runs bash -n.
  # shellcheck is not modelled: in nixpkgs' trivial-builders (the stored revision 00ee9b64)
  # it runs only as passthru.tests.shellcheck, which building a system does not run, and no
  # bcm module calls writeShellApplication (unit scripts use it only with
  # enableStrictShellChecks, which the skeleton does not offer).
  writeShellApplication =
    {
      name,
      text,
      runtimeInputs ? [ ],
      runtimeEnv ? null,
      bashOptions ? [
        "errexit"
        "nounset"
        "pipefail"
      ],
      inheritPath ? true,
      ...
    }:
    mkScriptBin {
      inherit name;
      binName = name;
      text =
        "#!${runtimeShell}\n"
        + lib.concatMapStringsSep "\n" (option: "set -o ${option}") bashOptions
        + "\n"
        + lib.optionalString (runtimeEnv != null) (
          lib.concatStrings (lib.mapAttrsToList (n: v: "${lib.toShellVar n v}\nexport ${n}\n") runtimeEnv)
        )
        + lib.optionalString (runtimeInputs != [ ]) (
          "\nexport PATH=\"${lib.makeBinPath runtimeInputs}${lib.optionalString inheritPath ":$PATH"}\"\n"
        )
        + "\n${text}\n";
    };

  # pkgs/pkgs-lib/formats.nix (stored revision 001740f0). The types are nixpkgs' atoms, so a
  # value nixpkgs would reject (a path, a nested set) is rejected here too.
  singleAtom = lib.types.nullOr (
    lib.types.oneOf [
      lib.types.bool
      lib.types.int
      lib.types.float
      lib.types.str
    ]
  );
  # keyValue: listsAsDuplicateKeys coerces single values to lists; listToValue accepts a
  # non-empty list.
  keyValueAtom =
    {
      listsAsDuplicateKeys,
      listToValue,
    }:
    if listsAsDuplicateKeys then
      lib.types.coercedTo singleAtom lib.lists.singleton (lib.types.listOf singleAtom)
    else if listToValue != null then
      lib.types.coercedTo singleAtom lib.lists.singleton (lib.types.nonEmptyListOf singleAtom)
    else
      singleAtom;
  # ini/iniWithGlobalSection: without atomsCoercedToLists, a single value stays a single value.
  iniAtom =
    {
      listsAsDuplicateKeys,
      listToValue,
      atomsCoercedToLists,
    }:
    let
      singleOr = if atomsCoercedToLists then lib.types.coercedTo singleAtom lib.lists.singleton else lib.types.either singleAtom;
    in
    if listsAsDuplicateKeys then
      singleOr (lib.types.listOf singleAtom)
    else if listToValue != null then
      singleOr (lib.types.nonEmptyListOf singleAtom)
    else
      singleAtom;
  listsToValues =
    listToValue:
    if listToValue != null then lib.mapAttrs (_: v: if lib.isList v then listToValue v else v) else lib.id;

  # pkgs/pkgs-lib/formats/java-properties/default.nix renders with jq and iconv: a "# " comment
  # line per line of `comment`, an empty line, then "key = value" per entry in key order, with
  # \ # ! tab CR and newlines escaped in keys and values, spaces and = also in keys, and a space
  # opening a value (or one of its continuation lines) escaped.
  javaPropertiesText =
    comment: value:
    let
      trim = s: lib.head (builtins.match "[ \t]*(.*[^ \t]|)[ \t]*" s);
      header = lib.concatMapStrings (line: "# ${trim line}\n") (lib.splitString "\n" comment) + "\n";
      common = lib.replaceStrings [ "\\" "\n" "#" "!" "\t" "\r" ] [ "\\\\" "\\n\\\n" "\\#" "\\!" "\\t" "\\r" ];
      escapeKey = key: lib.replaceStrings [ " " "=" ] [ "\\ " "\\=" ] (common key);
      escapeValue =
        v:
        lib.concatStringsSep "\n" (map (line: if lib.hasPrefix " " line then "\\${line}" else line) (lib.splitString "\n" (common v)));
      # Simplified: iconv turns characters beyond ASCII into \uXXXX escapes; the stand-in
      # refuses them rather than guess the escape.
      ascii =
        s:
        if builtins.match "[ -~\t\n\r]*" s != null then
          s
        else
          throw "formats.javaProperties stand-in: non-ASCII text in ${builtins.toJSON s} is not modelled (nixpkgs escapes it with iconv)";
    in
    header + lib.concatStrings (lib.mapAttrsToList (k: v: "${escapeKey (ascii k)} = ${escapeValue (ascii v)}\n") value);

  formats = {
    keyValue =
      {
        listsAsDuplicateKeys ? false,
        listToValue ? null,
        ...
      }@args:
      assert listsAsDuplicateKeys -> listToValue == null;
      {
        type = lib.types.attrsOf (keyValueAtom { inherit listsAsDuplicateKeys listToValue; });
        generate =
          name: value:
          writeText name (lib.generators.toKeyValue (removeAttrs args [ "listToValue" ]) (listsToValues listToValue value));
      };

    ini =
      {
        listsAsDuplicateKeys ? false,
        listToValue ? null,
        atomsCoercedToLists ? null,
        ...
      }@args:
      let
        atom = iniAtom {
          inherit listsAsDuplicateKeys listToValue;
          atomsCoercedToLists = if atomsCoercedToLists == null then false else atomsCoercedToLists;
        };
      in
      {
        type = lib.types.attrsOf (lib.types.attrsOf atom);
        generate =
          name: value:
          writeText name (
            lib.generators.toINI (removeAttrs args [
              "listToValue"
              "atomsCoercedToLists"
            ]) (lib.mapAttrs (_: listsToValues listToValue) value)
          );
      };

    iniWithGlobalSection =
      {
        listsAsDuplicateKeys ? false,
        listToValue ? null,
        atomsCoercedToLists ? null,
        ...
      }@args:
      let
        atom = iniAtom {
          inherit listsAsDuplicateKeys listToValue;
          atomsCoercedToLists = if atomsCoercedToLists == null then false else atomsCoercedToLists;
        };
      in
      {
        type = lib.types.submodule {
          options.globalSection = lib.mkOption {
            type = lib.types.attrsOf atom;
            default = { };
          };
          options.sections = lib.mkOption {
            type = lib.types.attrsOf (lib.types.attrsOf atom);
            default = { };
          };
        };
        generate =
          name:
          {
            sections ? { },
            globalSection ? { },
            ...
          }:
          writeText name (
            lib.generators.toINIWithGlobalSection
              (removeAttrs args [
                "listToValue"
                "atomsCoercedToLists"
              ])
              {
                globalSection = listsToValues listToValue globalSection;
                sections = lib.mapAttrs (_: listsToValues listToValue) sections;
              }
          );
      };

    javaProperties =
      {
        comment ? "Generated with Nix",
        boolToString ? lib.boolToString,
      }:
      {
        type = lib.types.attrsOf (
          lib.types.oneOf [
            (lib.types.coercedTo lib.types.package toString lib.types.str)
            (lib.types.coercedTo lib.types.bool boolToString lib.types.str)
            (lib.types.coercedTo lib.types.int toString lib.types.str)
            (lib.types.coercedTo lib.types.float toString lib.types.str)
          ]
        );
        generate = name: value: writeText name (javaPropertiesText comment value);
      };

    # Simplified: nixpkgs writes YAML (through remarshal); this writes the same value as JSON,
    # which YAML reads as the same document, and which Prometheus and promtool read alike.
    yaml =
      { ... }:
      {
        type = lib.types.anything;
        generate = name: value: writeText name (builtins.toJSON value);
      };

    # Simplified: nixpkgs pretty-prints with jq and types values as JSON values; no bcm module
    # uses it.
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
    bash
    runtimeShell
    ;
  writeScript = name: text: writeText name text;
  # trivial-builders/default.nix runCommand; simplified: never built, a stub package with the
  # derivation's passthru (as nixpkgs puts it on the derivation). Only VM tests use it.
  runCommand = name: env: _buildCommand: mkPackage name (env.passthru or { });
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
  findutils = mkPackage "findutils" { mainProgram = "find"; };
  openssl = mkPackage "openssl" { };
  age = mkPackage "age" { };
  jq = mkPackage "jq" { };
  curl = mkPackage "curl" { };
  systemd = mkPackage "systemd" { mainProgram = "systemctl"; };
  gnugrep = mkPackage "gnugrep" { mainProgram = "grep"; };
  gnused = mkPackage "gnused" { mainProgram = "sed"; };
  util-linux = mkPackage "util-linux" { mainProgram = "runuser"; };
  prometheus = mkPackage "prometheus" { };
  prometheus-node-exporter = mkPackage "node_exporter" { };
  prometheus-alertmanager = mkPackage "alertmanager" { };
  prometheus-jmx-javaagent = mkPackage "jmx-prometheus-javaagent" { };
  envsubst = mkPackage "envsubst" { };
  grafana = mkPackage "grafana" { };

  # trivial-builders/default.nix linkFarm: a directory of symlinks named by `entries`.
  # Simplified: builtins.toFile cannot make a directory, so this writes one "name -> path" line
  # per entry; the harness follows the paths in it like any reference.
  linkFarm =
    name: entries:
    writeText name (lib.concatMapStrings (e: "${e.name} -> ${toString e.path}\n") entries);
  # What `callPackage ../pkgs/bcm-tools` below gives; listed so the export names it among the
  # stub packages and the sandbox tests put this repository's bcm-tools at its path.
  bcm-tools = mkPackage "bcm-tools" { };

  # pkgs/top-level/splice.nix callPackage; simplified: a stub package named after the directory
  # (`../pkgs/bcm-tools` gives bcm-tools), never built. The sandbox tests run this repository's
  # bcm-tools in its place.
  callPackage = path: _args: mkPackage (baseNameOf (toString path)) { };
}
