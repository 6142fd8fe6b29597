# Operator secrets: the files `bcm-tools secrets` keeps encrypted in the repository's secrets/
# (plain age files, the format agenix uses), decrypted on the host at activation with its SSH
# host key into a root-owned directory in memory. The encrypted file may sit in the Nix store;
# the plaintext never does.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.bcm.secrets;
  runtimeDir = config.bcm.secretsDir;
  # Each activation decrypts into a fresh generation and then switches the `runtimeDir` link,
  # so services never see a half-written set of secrets.
  generationsDir = "${runtimeDir}.d";

  secretOptions =
    { name, ... }:
    {
      options = {
        file = lib.mkOption {
          type = lib.types.path;
          example = lib.literalExpression "../../secrets/backup-target.age";
          description = "The age-encrypted file, normally `secrets/NAME.age` in this repository.";
        };
        owner = lib.mkOption {
          type = lib.types.str;
          default = "root";
          description = "User owning the decrypted file.";
        };
        group = lib.mkOption {
          type = lib.types.str;
          default = "root";
          description = "Group owning the decrypted file.";
        };
        mode = lib.mkOption {
          type = lib.types.strMatching "0[0-7]{3}";
          default = "0400";
          description = "Permissions of the decrypted file.";
        };
        path = lib.mkOption {
          type = lib.types.str;
          readOnly = true;
          default = "${runtimeDir}/${name}";
          description = "Where the decrypted secret appears at runtime; point services here.";
        };
      };
    };

  decryptOne = name: secret: ''
    decrypt ${lib.escapeShellArgs [
      name
      "${secret.file}"
      secret.owner
      secret.group
      secret.mode
    ]}
  '';
in
{
  options.bcm = {
    secrets = lib.mkOption {
      type = lib.types.attrsOf (lib.types.submodule secretOptions);
      default = { };
      example = lib.literalExpression ''
        {
          backup-target = {
            file = ../../secrets/backup-target.age;
            owner = "lnd";
            mode = "0400";
          };
        }
      '';
      description = ''
        Operator secrets to decrypt at activation. Create and change them with
        `bcm-tools secrets edit NAME`; they are encrypted to this host's SSH host key and to the
        operator's Trezor. A service reads `config.bcm.secrets.NAME.path`.
      '';
    };
    secretsDir = lib.mkOption {
      type = lib.types.str;
      default = "/run/bcm-secrets";
      readOnly = true;
      description = "Directory (on tmpfs) holding the decrypted secrets.";
    };
    secretsIdentityPaths = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = [ "/etc/ssh/ssh_host_ed25519_key" ];
      description = ''
        Private keys the host decrypts with. The default is the SSH host key whose public half
        `bcm-tools secrets` encrypts to (`hosts/HOST/ssh_host_ed25519_key.pub`).
      '';
    };
  };

  config = lib.mkIf (cfg != { }) {
    assertions = lib.mapAttrsToList (name: secret: {
      assertion = secret.owner == "root" || config.users.users ? ${secret.owner};
      message = "bcm.secrets.${name}.owner is \"${secret.owner}\", which is not a user on this host.";
    }) cfg;

    system.activationScripts.bcmSecrets = {
      # Owners must exist before files are given to them.
      deps = [
        "users"
        "groups"
        "specialfs"
      ];
      text = ''
        bcm_secrets() {
          local identities=() id new old failed=0
          for id in ${lib.escapeShellArgs config.bcm.secretsIdentityPaths}; do
            [ -f "$id" ] && identities+=(-i "$id")
          done
          if [ ''${#identities[@]} -eq 0 ]; then
            echo "bcm-secrets: no identity among ${toString config.bcm.secretsIdentityPaths}; secrets not decrypted" >&2
            return 0
          fi
          mkdir -p -m 0751 ${generationsDir}
          new=$(mktemp -d ${generationsDir}/generation.XXXXXX)
          chmod 0751 "$new"
          old=""
          if [ -L ${runtimeDir} ]; then
            old=$(readlink -f ${runtimeDir})
            # Only ever remove a generation made here.
            case "$old" in ${generationsDir}/*) ;; *) old="" ;; esac
          elif [ -e ${runtimeDir} ]; then
            rm -rf ${runtimeDir}
          fi

          decrypt() {
            local name=$1 file=$2 owner=$3 group=$4 mode=$5
            if (umask 0077 && ${lib.getExe pkgs.age} --decrypt "''${identities[@]}" -o "$new/$name.tmp" "$file"); then
              chown "$owner:$group" "$new/$name.tmp"
              chmod "$mode" "$new/$name.tmp"
              mv -f "$new/$name.tmp" "$new/$name"
            else
              rm -f "$new/$name.tmp"
              echo "bcm-secrets: cannot decrypt $file for $name; keeping the previous copy, if any" >&2
              # A secret that no longer decrypts keeps its last good copy rather than vanishing.
              if [ -n "$old" ] && [ -f "$old/$name" ]; then cp -p "$old/$name" "$new/$name"; fi
              failed=1
            fi
          }

          ${lib.concatStrings (lib.mapAttrsToList decryptOne cfg)}
          ln -sfn "$new" ${runtimeDir}.tmp
          mv -Tf ${runtimeDir}.tmp ${runtimeDir}
          if [ -n "$old" ] && [ "$old" != "$new" ] && [ -d "$old" ]; then rm -rf "$old"; fi
          return $failed
        }
        bcm_secrets || echo "bcm-secrets: some secrets failed to decrypt" >&2
      '';
    };
  };
}
