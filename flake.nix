{
  description = "bcm: Bitcoin Cache Machine as a NixOS flake. Bitcoin, Lightning and Monero nodes on hybrid NVMe/HDD storage, over Tor";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});

      # Every directory under hosts/ is a NixOS configuration, so `bcm-tools gen-host`
      # adds a host without touching this file.
      hostNames = lib.attrNames (lib.filterAttrs (_: type: type == "directory") (builtins.readDir ./hosts));
      mkHost =
        name:
        lib.nixosSystem {
          modules = [
            self.nixosModules.default
            ./hosts/${name}
          ];
        };
    in
    {
      nixosModules = import ./modules/flake-modules.nix;

      nixosConfigurations = lib.genAttrs hostNames mkHost;

      packages = forAllSystems (pkgs: rec {
        bcm-tools = pkgs.callPackage ./pkgs/bcm-tools { };
        default = bcm-tools;
      });

      apps = forAllSystems (pkgs: rec {
        bcm-tools = {
          type = "app";
          program = lib.getExe self.packages.${pkgs.stdenv.hostPlatform.system}.bcm-tools;
        };
        default = bcm-tools;
      });

      # What `nix flake check` runs: no VM, so no KVM needed. The VM tests are below.
      checks = forAllSystems (
        pkgs:
        (import ./nixos-tests { inherit pkgs self; }).checks
        // {
          bcm-tools = self.packages.${pkgs.stdenv.hostPlatform.system}.bcm-tools;
          # hosts/ is what gen-host makes of examples/; a hand edit or a stale host fails here.
          hosts-match-specs =
            pkgs.runCommand "bcm-hosts-match-specs"
              { nativeBuildInputs = [ self.packages.${pkgs.stdenv.hostPlatform.system}.bcm-tools ]; }
              ''
                cd ${self}
                for spec in examples/*.toml; do
                  bcm-tools gen-host --spec "$spec" --out hosts --check
                done
                touch $out
              '';
        }
      );

      # The VM tests, which need KVM: `nix build .#vmTests.<name>` (nixos-tests/vm-tests.nix).
      # Not in `checks`, so `nix flake check` passes where there is no KVM.
      legacyPackages = forAllSystems (pkgs: {
        inherit (import ./nixos-tests { inherit pkgs self; }) vmTests;
      });

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ self.packages.${pkgs.stdenv.hostPlatform.system}.bcm-tools ];
          packages = [
            pkgs.nixfmt
            pkgs.age
            pkgs.python3Packages.pytest
            pkgs.python3Packages.hypothesis
          ];
        };
      });

      formatter = forAllSystems (pkgs: pkgs.nixfmt);
    };
}
