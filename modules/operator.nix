# The non-root operator: logs in with SSH keys, may run each service's CLI wrapper and read
# onion addresses, and nothing more (no sudo, no service groups).
{
  config,
  lib,
  ...
}:
let
  cfg = config.bcm.operator;
in
{
  imports = [ ./core.nix ];

  options.bcm.operator = {
    enable = lib.mkOption {
      type = lib.types.bool;
      default = true;
      description = "Whether to create the operator user.";
    };
    name = lib.mkOption {
      type = lib.types.strMatching "[a-z_][a-z0-9_-]*";
      default = "operator";
      description = "Login name of the operator.";
    };
    sshAuthorizedKeys = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = [ ];
      example = [ "ssh-ed25519 AAAAC3Nza... laptop" ];
      description = "SSH public keys allowed to log in as the operator.";
    };
    tools = lib.mkOption {
      type = lib.types.listOf lib.types.package;
      default = [ ];
      internal = true;
      description = "CLI wrappers the service modules hand to the operator.";
    };
  };

  options.bcm.deploy.sshAuthorizedKeys = lib.mkOption {
    type = lib.types.listOf lib.types.str;
    default = [ ];
    description = ''
      SSH public keys that may log in as root, for deploying with
      `nixos-rebuild --target-host root@HOST`. Empty: root cannot log in over SSH.
    '';
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = cfg.name != "root";
        message = "bcm.operator.name must not be root; pick a non-root login such as \"operator\".";
      }
    ];
    warnings = lib.optional (cfg.sshAuthorizedKeys == [ ]) "bcm.operator.sshAuthorizedKeys is empty: the operator cannot log in over SSH.";

    services.openssh = {
      enable = lib.mkDefault true;
      settings = {
        PasswordAuthentication = false;
        KbdInteractiveAuthentication = false;
        PermitRootLogin = if config.bcm.deploy.sshAuthorizedKeys == [ ] then "no" else "prohibit-password";
      };
    };
    # Merged rather than written as one attribute set: with `name = "root"` the two keys would
    # collide in Nix itself, and the user would see a parse-level error instead of the assertion.
    users.users = lib.mkMerge [
      { root.openssh.authorizedKeys.keys = config.bcm.deploy.sshAuthorizedKeys; }
      {
        ${cfg.name} = {
          isNormalUser = true;
          description = "bcm operator";
          extraGroups = [ config.bcm.lib.operatorGroup ];
          openssh.authorizedKeys.keys = cfg.sshAuthorizedKeys;
          packages = cfg.tools;
        };
      }
    ];
  };
}
