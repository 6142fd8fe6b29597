# The NixOS options the bcm modules and the generated hosts set, declared with nixpkgs' names
# and (simplified) types, so the modules evaluate without nixpkgs' module tree. Keep it small:
# an option missing here is an option the harness cannot check, and a typo in a module shows
# up as "option does not exist" just as it would on NixOS.
{ lib, ... }:
let
  inherit (lib) mkOption types;

  # nixpkgs' systemd unit option type: lists concatenate, other values must agree.
  unitOption = types.mkOptionType {
    name = "systemd option";
    merge =
      loc: defs:
      let
        defs' = lib.filterOverrides defs;
      in
      if lib.any (def: lib.isList def.value) defs' then
        lib.concatMap (def: lib.toList def.value) defs'
      else
        lib.mergeEqualOption loc defs';
  };

  strList = mkOption {
    type = types.listOf types.str;
    default = [ ];
  };
  lines = mkOption {
    type = types.lines;
    default = "";
  };

  serviceOptions = {
    options = {
      enable = mkOption {
        type = types.bool;
        default = true;
      };
      description = mkOption {
        type = types.str;
        default = "";
      };
      wantedBy = strList;
      requiredBy = strList;
      wants = strList;
      requires = strList;
      bindsTo = strList;
      partOf = strList;
      upholds = strList;
      after = strList;
      before = strList;
      conflicts = strList;
      unitConfig = mkOption {
        type = types.attrsOf unitOption;
        default = { };
      };
      serviceConfig = mkOption {
        type = types.attrsOf unitOption;
        default = { };
      };
      environment = mkOption {
        type = types.attrsOf (
          types.nullOr (
            types.oneOf [
              types.str
              types.path
              types.package
            ]
          )
        );
        default = { };
      };
      path = mkOption {
        type = types.listOf (types.either types.package types.str);
        default = [ ];
      };
      script = lines;
      preStart = lines;
      postStart = lines;
      preStop = lines;
      postStop = lines;
      restartTriggers = mkOption {
        type = types.listOf types.unspecified;
        default = [ ];
      };
      reloadTriggers = mkOption {
        type = types.listOf types.unspecified;
        default = [ ];
      };
      restartIfChanged = mkOption {
        type = types.bool;
        default = true;
      };
      startAt = mkOption {
        type = types.either types.str (types.listOf types.str);
        default = [ ];
      };
    };
  };

  userOptions =
    { name, ... }:
    {
      options = {
        name = mkOption {
          type = types.str;
          default = name;
        };
        isSystemUser = mkOption {
          type = types.bool;
          default = false;
        };
        isNormalUser = mkOption {
          type = types.bool;
          default = false;
        };
        group = mkOption {
          type = types.str;
          default = "";
        };
        extraGroups = strList;
        description = mkOption {
          type = types.str;
          default = "";
        };
        home = mkOption {
          type = types.str;
          default = "/var/empty";
        };
        createHome = mkOption {
          type = types.bool;
          default = false;
        };
        uid = mkOption {
          type = types.nullOr types.int;
          default = null;
        };
        openssh.authorizedKeys.keys = strList;
        packages = mkOption {
          type = types.listOf types.package;
          default = [ ];
        };
      };
    };
in
{
  options = {
    assertions = mkOption {
      type = types.listOf types.unspecified;
      default = [ ];
    };
    warnings = strList;

    systemd.services = mkOption {
      type = types.attrsOf (types.submodule serviceOptions);
      default = { };
    };
    systemd.tmpfiles.rules = strList;

    users.users = mkOption {
      type = types.attrsOf (types.submodule userOptions);
      default = { };
    };
    users.groups = mkOption {
      type = types.attrsOf (
        types.submodule (
          { name, ... }:
          {
            options.name = mkOption {
              type = types.str;
              default = name;
            };
            options.gid = mkOption {
              type = types.nullOr types.int;
              default = null;
            };
            options.members = strList;
          }
        )
      );
      default = { };
    };

    fileSystems = mkOption {
      type = types.attrsOf (
        types.submodule (
          { name, ... }:
          {
            options.mountPoint = mkOption {
              type = types.str;
              default = name;
            };
            options.device = mkOption {
              type = types.nullOr types.str;
              default = null;
            };
            options.fsType = mkOption {
              type = types.str;
              default = "auto";
            };
            options.options = mkOption {
              type = types.nonEmptyListOf types.str;
              default = [ "defaults" ];
            };
            options.neededForBoot = mkOption {
              type = types.bool;
              default = false;
            };
          }
        )
      );
      default = { };
    };

    networking.hostName = mkOption {
      type = types.strMatching "^$|^[[:alnum:]]([[:alnum:]_-]{0,61}[[:alnum:]])?$";
      default = "nixos";
    };
    networking.firewall.enable = mkOption {
      type = types.bool;
      default = true;
    };
    networking.firewall.allowedTCPPorts = mkOption {
      type = types.listOf types.port;
      default = [ ];
    };

    services.openssh.enable = mkOption {
      type = types.bool;
      default = false;
    };
    # Free-form like nixpkgs' (sshd_config keys), with the keys bcm sets typed as nixpkgs types
    # them, so a misspelt PermitRootLogin value fails here as it would on NixOS.
    services.openssh.settings = mkOption {
      type = types.submodule {
        freeformType = types.attrsOf types.anything;
        options.PermitRootLogin = mkOption {
          type = types.nullOr (
            types.enum [
              "yes"
              "without-password"
              "prohibit-password"
              "forced-commands-only"
              "no"
            ]
          );
          default = "prohibit-password";
        };
        options.PasswordAuthentication = mkOption {
          type = types.nullOr types.bool;
          default = true;
        };
        options.KbdInteractiveAuthentication = mkOption {
          type = types.nullOr types.bool;
          default = true;
        };
      };
      default = { };
    };

    boot.loader.systemd-boot.enable = mkOption {
      type = types.bool;
      default = false;
    };
    boot.loader.efi.canTouchEfiVariables = mkOption {
      type = types.bool;
      default = false;
    };

    environment.systemPackages = mkOption {
      type = types.listOf types.package;
      default = [ ];
    };

    nixpkgs.hostPlatform = mkOption {
      type = types.either types.str (types.attrsOf types.anything);
    };
    system.stateVersion = mkOption {
      type = types.str;
    };
    # nixpkgs accepts a plain script or { text; deps; supportsDryActivation; }.
    system.activationScripts = mkOption {
      type = types.attrsOf (
        types.either types.str (
          types.submodule {
            options.text = mkOption { type = types.lines; };
            options.deps = strList;
            options.supportsDryActivation = mkOption {
              type = types.bool;
              default = false;
            };
          }
        )
      );
      default = { };
    };
  };
}
