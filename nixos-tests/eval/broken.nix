# Evaluates one broken-config fixture: a valid fixture host plus a module that breaks it. The
# fixture file is { host; module; expect; } where `expect` is a fragment of the assertion
# message that must fire. Returns a list of { check; ok; detail; } like eval.nix.
{ nixpkgsLib, fixture }:
let
  lib = import nixpkgsLib;
  case = import fixture;
  results = import ./eval.nix {
    inherit nixpkgsLib;
    host = ./fixtures/hosts + "/${case.host}";
    extraModules = [ case.module ];
    checkFiles = [ ./checks/assertions-only.nix ];
  };
  messages = (lib.head results).messages;
  fired = lib.any (m: lib.hasInfix case.expect m) messages;
in
[
  {
    check = "assertion fires: \"${case.expect}\"";
    ok = fired;
    detail =
      if messages == [ ] then "no assertion failed" else "messages were: ${lib.concatStringsSep "; " messages}";
  }
]
