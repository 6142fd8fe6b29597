# The NixOS options the bcm modules and the generated hosts set, declared with nixpkgs' names,
# types, defaults and the checks nixpkgs makes on them, so the modules evaluate without
# nixpkgs' module tree and fail here where they would fail on NixOS. Keep it small: an option
# missing here is an option the harness cannot check, and a typo in a module shows up as
# "option does not exist" just as it would on NixOS.
#
# Each declaration names the nixpkgs file it mirrors, and says "simplified:" where it is
# deliberately narrower. The facts come from NixOS/nixpkgs; the code is this project's own.
{
  config,
  lib,
  pkgs,
  extendModules,
  ...
}:
let
  inherit (lib) mkOption types;

  # --- systemd units --------------------------------------------------------------------------

  # nixos/lib/systemd-lib.nix: unitNameType.
  unitNameType = types.strMatching "[a-zA-Z0-9@%:_.\\-]+[.](service|socket|device|mount|automount|swap|target|path|timer|scope|slice)";

  # nixos/lib/systemd-unit-options.nix: unitOption. Once overrides are filtered, definitions of
  # which any is a list are concatenated (a lone value counting as a one-element list); other
  # values must all be equal.
  unitOption = types.mkOptionType {
    name = "systemd option";
    merge =
      loc: defs:
      let
        kept = lib.filterOverrides defs;
      in
      if lib.any (def: lib.isList def.value) kept then
        lib.concatMap (def: lib.toList def.value) kept
      else
        lib.mergeEqualOption loc kept;
  };

  # nixos/lib/systemd-lib.nix: assertValueOneOf and checkUnitConfig. The check sees each
  # definition before merging, so a value may still be an mkIf or mkOverride wrapper; nixpkgs
  # looks through one level of either. Failures are traced and the definition is rejected.
  valueOneOf =
    key: allowed: group: attrs:
    lib.optional (
      attrs ? ${key} && !lib.elem attrs.${key} allowed
    ) "Systemd ${group} field `${key}' cannot have value `${toString attrs.${key}}'.";
  unitConfigCheck =
    group: checks: attrs:
    let
      unwrapped = lib.mapAttrs (
        _: v:
        if lib.elem (v._type or "") [
          "override"
          "if"
        ] then
          v.content
        else
          v
      ) attrs;
      errors = lib.concatMap (check: check group unwrapped) checks;
    in
    errors == [ ] || builtins.trace (lib.concatStringsSep "\n" errors) false;

  # nixos/lib/systemd-unit-options.nix: checkService. nixpkgs has no such check on unitConfig.
  serviceCheck = unitConfigCheck "Service" [
    (valueOneOf "Type" [
      "exec"
      "simple"
      "forking"
      "oneshot"
      "dbus"
      "notify"
      "notify-reload"
      "idle"
    ])
    (valueOneOf "Restart" [
      "no"
      "on-success"
      "on-failure"
      "on-abnormal"
      "on-abort"
      "always"
    ])
  ];

  # nixos/lib/systemd-lib.nix: makeJobScript, as built when enableStrictShellChecks is off
  # (simplified: the skeleton offers no systemd.enableStrictShellChecks, nixpkgs' default is
  # off). The script is a writeShellScriptBin, so `run` parses it with bash -n like the others.
  jobScript =
    name: text:
    let
      scriptName = lib.replaceStrings [ "\\" "@" ] [ "-" "_" ] (lib.replaceStrings [ "\\" ] [ "\\\\" ] name);
      package = (pkgs.writeShellScriptBin scriptName "set -e\n\n${text}\n").overrideAttrs (_: {
        name = "unit-script-${scriptName}";
      });
    in
    lib.getExe package;

  unitList = mkOption {
    type = types.listOf unitNameType;
    default = [ ];
  };
  scriptText = mkOption {
    type = types.lines;
    default = "";
  };

  # nixos/lib/systemd-types.nix: services = attrsOf (submodule [ stage2ServiceOptions unitConfig
  # stage2ServiceConfig ]). Options from nixos/lib/systemd-unit-options.nix (sharedOptions,
  # commonUnitOptions, stage2CommonUnitOptions, serviceOptions, stage2ServiceOptions);
  # simplified: only those the bcm modules set or the harness reads.
  serviceModule =
    { name, config, ... }:
    {
      options = {
        enable = mkOption {
          type = types.bool;
          default = true;
        };
        description = mkOption {
          type = types.singleLineStr;
          default = "";
        };
        wantedBy = unitList;
        requiredBy = unitList;
        wants = unitList;
        requires = unitList;
        bindsTo = unitList;
        partOf = unitList;
        upholds = unitList;
        after = unitList;
        before = unitList;
        conflicts = unitList;
        unitConfig = mkOption {
          type = types.attrsOf unitOption;
          default = { };
        };
        restartTriggers = mkOption {
          type = types.listOf types.unspecified;
          default = [ ];
        };
        reloadTriggers = mkOption {
          type = types.listOf unitOption;
          default = [ ];
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
          type = types.listOf (
            types.oneOf [
              types.package
              types.str
            ]
          );
          default = [ ];
        };
        serviceConfig = mkOption {
          type = types.addCheck (types.attrsOf unitOption) serviceCheck;
          default = { };
        };
        script = scriptText;
        scriptArgs = mkOption {
          type = types.str;
          default = "";
        };
        preStart = scriptText;
        postStart = scriptText;
        preStop = scriptText;
        postStop = scriptText;
        restartIfChanged = mkOption {
          type = types.bool;
          default = true;
        };
        startAt = mkOption {
          type = types.either types.str (types.listOf types.str);
          default = [ ];
          apply = lib.toList;
        };
      };

      config = lib.mkMerge [
        # systemd-unit-options.nix serviceOptions: each script becomes the matching Exec* line.
        (lib.mkIf (config.preStart != "") { serviceConfig.ExecStartPre = [ (jobScript "${name}-pre-start" config.preStart) ]; })
        (lib.mkIf (config.script != "") {
          serviceConfig.ExecStart = jobScript "${name}-start" config.script + " " + config.scriptArgs;
        })
        (lib.mkIf (config.postStart != "") {
          serviceConfig.ExecStartPost = [ (jobScript "${name}-post-start" config.postStart) ];
        })
        (lib.mkIf (config.preStop != "") { serviceConfig.ExecStop = jobScript "${name}-pre-stop" config.preStop; })
        (lib.mkIf (config.postStop != "") { serviceConfig.ExecStopPost = jobScript "${name}-post-stop" config.postStop; })

        # systemd-lib.nix unitConfig: the dependency lists and description become [Unit] keys,
        # so a module that also sets one of those keys directly conflicts as on NixOS.
        {
          unitConfig =
            let
              joined = key: list: lib.optionalAttrs (list != [ ]) { ${key} = toString list; };
              triggers =
                key: list:
                lib.optionalAttrs (list != [ ]) {
                  ${key} = "${pkgs.writeText "${key}-${name}" (
                    toString (map (x: if lib.isPath x then "${x}" else x) (lib.flatten list))
                  )}";
                };
            in
            joined "Requires" config.requires
            // joined "Wants" config.wants
            // joined "Upholds" config.upholds
            // joined "After" config.after
            // joined "Before" config.before
            // joined "BindsTo" config.bindsTo
            // joined "PartOf" config.partOf
            // joined "Conflicts" config.conflicts
            // triggers "X-Restart-Triggers" config.restartTriggers
            // triggers "X-Reload-Triggers" config.reloadTriggers
            // lib.optionalAttrs (config.description != "") { Description = config.description; };
        }

        # systemd-lib.nix serviceConfig and stage2ServiceConfig: a minimal default PATH.
        {
          environment.PATH = lib.mkIf (
            config.path != [ ]
          ) "${lib.makeBinPath config.path}:${lib.makeSearchPathOutput "bin" "sbin" config.path}";
          path = lib.mkAfter [
            pkgs.coreutils
            pkgs.findutils
            pkgs.gnugrep
            pkgs.gnused
            pkgs.systemd
          ];
        }
      ];
    };

  # --- users and groups -----------------------------------------------------------------------

  nameLengthChecked =
    what: x:
    assert (lib.stringLength x < 32 || abort "${what} '${x}' is longer than 31 characters which is not allowed!");
    x;

  # nixos/modules/config/users-groups.nix: userOpts; simplified: no passwords, shells, linger,
  # subordinate ids or `enable` (every user counts as enabled).
  userModule =
    { name, config, ... }:
    {
      options = {
        name = mkOption {
          type = types.passwdEntry types.str;
          apply = nameLengthChecked "Username";
        };
        description = mkOption {
          type = types.passwdEntry types.str;
          default = "";
        };
        uid = mkOption {
          type = types.nullOr types.int;
          default = null;
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
          apply = nameLengthChecked "Group name";
          default = "";
        };
        extraGroups = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
        home = mkOption {
          type = types.passwdEntry types.path;
          default = "/var/empty";
        };
        createHome = mkOption {
          type = types.bool;
          default = false;
        };
        packages = mkOption {
          type = types.listOf types.package;
          default = [ ];
        };
        # nixos/modules/services/networking/ssh/sshd.nix adds this to every user (its stored
        # revision 00976b19 types the keys listOf str).
        openssh.authorizedKeys.keys = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
      };
      config = lib.mkMerge [
        { name = lib.mkDefault name; }
        # users-groups.nix: what isNormalUser implies (users.defaultUserHome is /home).
        (lib.mkIf config.isNormalUser {
          group = lib.mkDefault "users";
          createHome = lib.mkDefault true;
          home = lib.mkDefault "/home/${config.name}";
          isSystemUser = lib.mkDefault false;
        })
      ];
    };

  # nixos/modules/config/users-groups.nix: groupOpts. Members are every user naming the group
  # in extraGroups.
  groupModule =
    { name, config, ... }:
    {
      options = {
        name = mkOption { type = types.passwdEntry types.str; };
        gid = mkOption {
          type = types.nullOr types.int;
          default = null;
        };
        members = mkOption {
          type = types.listOf (types.passwdEntry types.str);
          default = [ ];
        };
      };
      config = {
        name = lib.mkDefault name;
        members = lib.mapAttrsToList (_: user: user.name) (
          lib.filterAttrs (_: user: lib.elem config.name user.extraGroups) usersCfg.users
        );
      };
    };

  usersCfg = config.users;

  # users-groups.nix idsAreUnique, without its trace of the duplicate.
  idsUnique =
    set: attr:
    let
      ids = lib.mapAttrsToList (_: entry: toString entry.${attr}) (lib.filterAttrs (_: entry: entry.${attr} != null) set);
    in
    lib.length ids == lib.length (lib.unique ids);

  userAssertions = lib.concatLists (
    lib.mapAttrsToList (
      _: user:
      let
        # shadow's is_valid_name, as users-groups.nix spells it.
        nameRegex = "[a-zA-Z0-9_.][a-zA-Z0-9_.-]*";
        effectivelySystem = user.isSystemUser || (user.uid != null && user.uid < 1000 && !user.isNormalUser);
      in
      [
        {
          assertion = builtins.match nameRegex user.name != null;
          message = "The username \"${user.name}\" is not valid, it does not match the regex \"${nameRegex}\".";
        }
        {
          assertion = user.isNormalUser && user.uid != null -> user.uid >= 1000;
          message = "A user cannot have a users.users.${user.name}.uid set below 1000 and set users.users.${user.name}.isNormalUser.";
        }
        {
          assertion = lib.xor effectivelySystem user.isNormalUser;
          message = "Exactly one of users.users.${user.name}.isSystemUser and users.users.${user.name}.isNormalUser must be set.";
        }
        {
          assertion = user.group != "";
          message = "users.users.${user.name}.group is unset. This used to default to nogroup, but this is unsafe.";
        }
      ]
    ) usersCfg.users
  );

  groupNames = lib.mapAttrsToList (_: group: group.name) usersCfg.groups;
  usersWithoutGroup = lib.filterAttrs (_: user: user.group != "" && !lib.elem user.group groupNames) usersCfg.users;

  # --- file systems ---------------------------------------------------------------------------

  # nixos/modules/tasks/filesystems.nix: its own non-empty string checks.
  nonBlank = s: builtins.match "[ \t\n]*" s == null;
  fsNonEmptyStr = types.addCheck types.str nonBlank // {
    description = "string (with check: non-empty)";
  };
  fsPath = types.addCheck types.str (s: nonBlank s && builtins.match ".+/" s == null) // {
    description = "string (with check: non-empty without trailing slash)";
  };

  # nixos/lib/utils.nix: pathsNeededForBoot and fsNeededForBoot.
  pathsNeededForBoot = [
    "/"
    "/nix"
    "/nix/store"
    "/var"
    "/var/log"
    "/var/lib"
    "/var/lib/nixos"
    "/etc"
    "/usr"
  ];
  neededForBoot = fs: fs.neededForBoot || lib.elem fs.mountPoint pathsNeededForBoot;

  # nixos/modules/tasks/filesystems.nix: coreFileSystemOpts and fileSystemOpts, with
  # neededForBoot from nixos/modules/system/boot/stage-1.nix; simplified: no enable, label,
  # autoResize, stratis or overlay options.
  fileSystemModule =
    { name, config, ... }:
    {
      options = {
        mountPoint = mkOption {
          type = fsPath;
          default = name;
        };
        device = mkOption {
          type = types.nullOr fsNonEmptyStr;
          default = null;
        };
        fsType = mkOption {
          type = fsNonEmptyStr;
          default = "auto";
        };
        options = mkOption {
          type = types.nonEmptyListOf fsNonEmptyStr;
          default = [ "defaults" ];
        };
        depends = mkOption {
          type = types.listOf fsPath;
          default = [ ];
        };
        autoFormat = mkOption {
          type = types.bool;
          default = false;
        };
        noCheck = mkOption {
          type = types.bool;
          default = false;
        };
        neededForBoot = mkOption {
          type = types.bool;
          default = false;
        };
      };
      # These definitions replace the ["defaults"] default whenever one applies, as in nixpkgs.
      # Simplified: `depends` of a file system mounted in the initrd is not modelled (nixpkgs
      # then needs the systemd initrd and prefixes /sysroot).
      config.options = lib.mkMerge [
        (lib.mkIf config.autoFormat [ "x-systemd.makefs" ])
        (lib.mkIf (neededForBoot config) [ "x-initrd.mount" ])
        (lib.mkIf (config.depends != [ ] && !neededForBoot config) (
          map (path: "x-systemd.requires-mounts-for=${path}") config.depends
        ))
      ];
    };

  # --- activation scripts ---------------------------------------------------------------------

  # nixos/modules/system/activation/activation-script.nix: scriptType true.
  activationScriptType = types.either types.str (
    types.submodule {
      options.deps = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      options.text = mkOption { type = types.lines; };
      options.supportsDryActivation = mkOption {
        type = types.bool;
        default = false;
      };
    }
  );
  activationDeps = script: if lib.isString script then [ ] else script.deps;
  missingActivationDeps = lib.concatLists (
    lib.mapAttrsToList (
      name: script: map (dep: { inherit name dep; }) (lib.filter (dep: !(config.system.activationScripts ? ${dep})) (activationDeps script))
    ) config.system.activationScripts
  );

  # --- Prometheus -----------------------------------------------------------------------------

  promCfg = config.services.prometheus;
  nodeCfg = promCfg.exporters.node;
  amCfg = promCfg.alertmanager;
  nullOpt = type: mkOption {
    type = types.nullOr type;
    default = null;
  };

  # nixos/modules/services/monitoring/prometheus/default.nix (stored revision 62237455239 of the
  # file index, nixfmt-formatted, with enableAgentMode and checkConfig = "syntax-only"):
  # promTypes.static_config, scrape_config, globalConfig. Simplified: only the keys bcm sets;
  # nixpkgs' submodules refuse unknown keys too, so a misspelt key fails here as it does there.
  staticConfigType = types.submodule {
    options.targets = mkOption { type = types.listOf types.str; };
    options.labels = mkOption {
      type = types.attrsOf types.str;
      default = { };
    };
  };
  scrapeConfigType = types.submodule {
    options = {
      job_name = mkOption { type = types.str; };
      scrape_interval = nullOpt types.str;
      scrape_timeout = nullOpt types.str;
      metrics_path = nullOpt types.str;
      honor_labels = nullOpt types.bool;
      static_configs = nullOpt (types.listOf staticConfigType);
    };
  };
  globalConfigType = types.submodule {
    options = {
      evaluation_interval = nullOpt types.str;
      external_labels = nullOpt (types.attrsOf types.str);
      scrape_interval = nullOpt types.str;
      scrape_timeout = nullOpt types.str;
    };
  };

  # default.nix filterValidPrometheus: drops `_module` and every null, at any depth.
  filterValidPrometheus =
    x:
    if lib.isAttrs x then
      lib.mapAttrs (_: filterValidPrometheus) (lib.filterAttrs (n: v: n != "_module" && v != null) x)
    else if lib.isList x then
      map filterValidPrometheus x
    else
      x;

  # default.nix promtoolCheck runs `promtool check ...` on the file at build time and hands on
  # a symlink to it. Simplified: the file itself; pkgs/bcm-tools/tests/test_monitoring.py runs
  # the real promtool on the exported files instead.
  promtoolCheck = _what: _name: file: file;

  promConfig = {
    alerting = {
      inherit (promCfg) alertmanagers;
    };
    global = filterValidPrometheus promCfg.globalConfig;
    remote_read = [ ];
    remote_write = [ ];
    rule_files = map (promtoolCheck "check rules" "rules") (
      promCfg.ruleFiles
      ++ lib.optionals (promCfg.rules != [ ]) [ (pkgs.writeText "prometheus.rules" (lib.concatStringsSep "\n" promCfg.rules)) ]
    );
    scrape_configs = filterValidPrometheus promCfg.scrapeConfigs;
  };
  prometheusYml = promtoolCheck "check config" "prometheus.yml" ((pkgs.formats.yaml { }).generate "prometheus.yml" promConfig);
  promArgs =
    promCfg.extraFlags
    ++ [
      "--config.file=${prometheusYml}"
      "--web.listen-address=${promCfg.listenAddress}:${toString promCfg.port}"
      "--alertmanager.notification-queue-capacity=${toString promCfg.alertmanagerNotificationQueueCapacity}"
      "--storage.tsdb.path=/var/lib/${promCfg.stateDir}/data/"
    ]
    ++ lib.optional (promCfg.retentionTime != null) "--storage.tsdb.retention.time=${promCfg.retentionTime}";
  joinArgs = args: lib.optionalString (args != [ ]) (" \\\n  " + lib.concatStringsSep " \\\n  " args);

  # nixos/modules/services/monitoring/prometheus/exporters.nix (stored revision 62296537581 of
  # the file index): mkExporterOpts, of which the options bcm sets; and node.nix (the revision
  # with listenStream): enabledCollectors, disabledCollectors.
  exporterOpts = name: port: {
    enable = mkOption {
      type = types.bool;
      default = false;
    };
    extraFlags = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };
    listenAddress = mkOption {
      type = types.str;
      default = "0.0.0.0";
    };
    port = mkOption {
      type = types.port;
      default = port;
    };
    user = mkOption {
      type = types.str;
      default = "${name}-exporter";
    };
    group = mkOption {
      type = types.str;
      default = "${name}-exporter";
    };
  };
  collectorIsEnabled = c: lib.elem c nodeCfg.enabledCollectors;
  collectorIsDisabled = c: lib.elem c nodeCfg.disabledCollectors;

  # nixos/modules/services/monitoring/grafana.nix (the settings-era revision 17640616 of the
  # file index): the INI settings with nixpkgs' formats.ini writer, and the provisioning files.
  # nixpkgs links the provisioning files into one directory (runCommand and lndir) and points
  # settings.paths.provisioning at it; simplified: the directory is a linkFarm of the two files
  # bcm provisions, and the INI is written with formats.ini's defaults.
  grafanaCfg = config.services.grafana;
  provisionFile = name: settings: (pkgs.formats.yaml { }).generate "${name}.yaml" settings;
  grafanaProvisioning = pkgs.linkFarm "grafana-provisioning" [
    {
      name = "datasources/datasource.yaml";
      path = provisionFile "datasource" grafanaCfg.provision.datasources.settings;
    }
    {
      name = "dashboards/dashboard.yaml";
      path = provisionFile "dashboard" grafanaCfg.provision.dashboards.settings;
    }
  ];
  grafanaIni = (pkgs.formats.ini { }).generate "config.ini" (
    lib.recursiveUpdate grafanaCfg.settings (lib.optionalAttrs grafanaCfg.provision.enable { paths.provisioning = "${grafanaProvisioning}"; })
  );

  # nixos/modules/services/monitoring/prometheus/alertmanager.nix (stored revision 01f31c2e):
  # the configuration as JSON, filled in by envsubst from environmentFile before the start.
  # Simplified: nixpkgs checks the file with amtool at build time (the tests do it here).
  alertmanagerYml = pkgs.writeText "alertmanager.yml" (builtins.toJSON amCfg.configuration);
  amArgs = amCfg.extraFlags ++ [
    "--config.file /tmp/alert-manager-substituted.yaml"
    "--web.listen-address ${amCfg.listenAddress}:${toString amCfg.port}"
    "--log.level ${amCfg.logLevel}"
    "--storage.path /var/lib/alertmanager"
  ];
in
{
  options = {
    # nixos/modules/misc/assertions.nix.
    assertions = mkOption {
      type = types.listOf types.unspecified;
      default = [ ];
    };
    warnings = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };

    # nixos/modules/system/boot/systemd.nix (type from nixos/lib/systemd-types.nix).
    systemd.services = mkOption {
      type = types.attrsOf (types.submodule serviceModule);
      default = { };
    };
    # nixos/modules/system/boot/systemd/tmpfiles.nix.
    systemd.tmpfiles.rules = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };

    # nixos/modules/config/users-groups.nix.
    users.users = mkOption {
      type = types.attrsOf (types.submodule userModule);
      default = { };
    };
    users.groups = mkOption {
      type = types.attrsOf (types.submodule groupModule);
      default = { };
    };
    users.enforceIdUniqueness = mkOption {
      type = types.bool;
      default = true;
    };

    # nixos/modules/misc/ids.nix: the fixed uids and gids NixOS hands out.
    ids.uids = mkOption {
      internal = true;
      type = types.attrsOf types.int;
    };
    ids.gids = mkOption {
      internal = true;
      type = types.attrsOf types.int;
    };

    # nixos/modules/tasks/filesystems.nix.
    fileSystems = mkOption {
      type = types.attrsOf (types.submodule fileSystemModule);
      default = { };
    };

    # nixos/modules/tasks/network-interfaces.nix.
    networking.hostName = mkOption {
      type = types.strMatching "^$|^[[:alnum:]]([[:alnum:]_-]{0,61}[[:alnum:]])?$";
      default = "nixos";
    };
    # nixos/modules/services/networking/firewall.nix; simplified: no port-list canonicalisation.
    networking.firewall.enable = mkOption {
      type = types.bool;
      default = true;
    };
    networking.firewall.allowedTCPPorts = mkOption {
      type = types.listOf types.port;
      default = [ ];
    };

    # nixos/modules/services/networking/ssh/sshd.nix.
    services.openssh.enable = mkOption {
      type = types.bool;
      default = false;
    };
    # sshd.nix: free-form (sshd_config keys), with the keys bcm sets typed as nixpkgs types them,
    # so a misspelt PermitRootLogin value fails here as it would on NixOS.
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

    # nixos/modules/services/security/tor.nix (mkEnableOption); only the switch, so a module can
    # refuse to run next to nixpkgs' Tor service.
    services.tor.enable = mkOption {
      type = types.bool;
      default = false;
    };

    # nixos/modules/services/monitoring/prometheus/default.nix (revision named above): the
    # options bcm sets, with nixpkgs' types and defaults.
    services.prometheus = {
      enable = mkOption {
        type = types.bool;
        default = false;
      };
      package = mkOption {
        type = types.package;
        default = pkgs.prometheus;
      };
      listenAddress = mkOption {
        type = types.str;
        default = "0.0.0.0";
      };
      port = mkOption {
        type = types.port;
        default = 9090;
      };
      stateDir = mkOption {
        type = types.str;
        default = "prometheus2";
      };
      retentionTime = nullOpt types.str;
      globalConfig = mkOption {
        type = globalConfigType;
        default = { };
      };
      scrapeConfigs = mkOption {
        type = types.listOf scrapeConfigType;
        default = [ ];
      };
      ruleFiles = mkOption {
        type = types.listOf types.path;
        default = [ ];
      };
      rules = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      alertmanagers = mkOption {
        type = types.listOf types.attrs;
        default = [ ];
      };
      alertmanagerNotificationQueueCapacity = mkOption {
        type = types.int;
        default = 10000;
      };
      extraFlags = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      # exporters.nix: one submodule per exporter; simplified: only node.
      exporters.node = exporterOpts "node" 9100 // {
        enabledCollectors = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
        disabledCollectors = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
      };
      # alertmanager.nix.
      alertmanager = {
        enable = mkOption {
          type = types.bool;
          default = false;
        };
        package = mkOption {
          type = types.package;
          default = pkgs.prometheus-alertmanager;
        };
        configuration = nullOpt types.attrs;
        listenAddress = mkOption {
          type = types.str;
          default = "";
        };
        port = mkOption {
          type = types.int;
          default = 9093;
        };
        logLevel = mkOption {
          type = types.enum [
            "debug"
            "info"
            "warn"
            "error"
            "fatal"
          ];
          default = "warn";
        };
        extraFlags = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
        environmentFile = nullOpt types.path;
      };
    };

    # grafana.nix: the options bcm sets. `settings` is free-form INI by section, with the keys
    # bcm sets typed as nixpkgs types them.
    services.grafana = {
      enable = mkOption {
        type = types.bool;
        default = false;
      };
      package = mkOption {
        type = types.package;
        default = pkgs.grafana;
      };
      dataDir = mkOption {
        type = types.str;
        default = "/var/lib/grafana";
      };
      settings = mkOption {
        default = { };
        type = types.submodule {
          freeformType = types.attrsOf (types.attrsOf types.anything);
          options.server.http_addr = mkOption {
            type = types.str;
            default = "127.0.0.1";
          };
          options.server.http_port = mkOption {
            type = types.port;
            default = 3000;
          };
          options.security.admin_password = mkOption {
            type = types.str;
            default = "admin";
          };
          # Simplified: whether nixpkgs gives Grafana's published default key or demands one
          # differs between releases; the skeleton demands nothing and bcm always sets it.
          options.security.secret_key = mkOption {
            type = types.nullOr types.str;
            default = null;
          };
          options.analytics.reporting_enabled = mkOption {
            type = types.bool;
            default = true;
          };
        };
      };
      provision.enable = mkOption {
        type = types.bool;
        default = false;
      };
      provision.datasources.settings = nullOpt types.attrs;
      provision.dashboards.settings = nullOpt types.attrs;
    };

    # nixos/modules/system/boot/loader/systemd-boot/systemd-boot.nix.
    boot.loader.systemd-boot.enable = mkOption {
      type = types.bool;
      default = false;
    };
    # nixos/modules/system/boot/loader/efi.nix.
    boot.loader.efi.canTouchEfiVariables = mkOption {
      type = types.bool;
      default = false;
    };

    # nixos/modules/config/system-path.nix.
    environment.systemPackages = mkOption {
      type = types.listOf types.package;
      default = [ ];
    };

    # nixos/modules/misc/nixpkgs.nix; simplified: not elaborated into a platform.
    nixpkgs.hostPlatform = mkOption {
      type = types.either types.str (types.attrsOf types.anything);
    };
    # nixos/modules/system/activation/specialisation.nix: each configuration is this system
    # extended with no-clone.nix, so `specialisation.<name>.configuration` is the specialised
    # system's config. Simplified: inheritParentConfig = false (nixpkgs starts from
    # noUserModules) is refused, and no-clone.nix's boot.loader.grub.device is left out.
    specialisation = mkOption {
      default = { };
      type = types.attrsOf (
        types.submodule {
          options.inheritParentConfig = mkOption {
            type = types.addCheck types.bool (parent: parent || throw "skeleton: specialisation.<name>.inheritParentConfig = false is not modelled");
            default = true;
          };
          options.configuration = mkOption {
            default = { };
            inherit
              (extendModules {
                modules = [
                  (
                    { lib, ... }:
                    {
                      specialisation = lib.mkOverride 0 { };
                      isSpecialisation = lib.mkOverride 0 true;
                    }
                  )
                ];
              })
              type
              ;
          };
        }
      );
    };
    # nixos/modules/system/activation/top-level.nix.
    isSpecialisation = mkOption {
      type = types.bool;
      internal = true;
      default = false;
    };
    # nixos/modules/misc/version.nix; simplified: no default.
    system.stateVersion = mkOption {
      type = types.str;
    };
    # nixos/modules/system/activation/activation-script.nix; simplified: the assembled
    # `script` nixpkgs adds in `apply` is not built.
    system.activationScripts = mkOption {
      type = types.attrsOf activationScriptType;
      default = { };
    };
  };

  config = lib.mkMerge [
  {
    # ids.nix values for the accounts defined below and for Tor (nixpkgs' own tor module uses
    # them); simplified: nixpkgs lists a few hundred.
    ids.uids = {
      root = 0;
      tor = 35;
      prometheus = 255;
      grafana = 196;
      nobody = 65534;
    };
    ids.gids = {
      root = 0;
      wheel = 1;
      tor = 35;
      prometheus = 255;
      grafana = 196;
      users = 100;
      nogroup = 65534;
    };

    # users-groups.nix defines these accounts on every system; simplified: of its built-in
    # groups, only those a user here can name as primary group (root, nogroup, users) and wheel.
    users.users.root = {
      uid = config.ids.uids.root;
      description = "System administrator";
      home = "/root";
      group = "root";
    };
    users.users.nobody = {
      uid = config.ids.uids.nobody;
      isSystemUser = true;
      description = "Unprivileged account (don't use!)";
      group = "nogroup";
    };
    users.groups = {
      root.gid = config.ids.gids.root;
      wheel.gid = config.ids.gids.wheel;
      nogroup.gid = config.ids.gids.nogroup;
      users.gid = config.ids.gids.users;
    };

    # Snippets nixpkgs always defines that bcm snippets list in `deps`: users and groups
    # (users-groups.nix), specialfs (activation-script.nix). Simplified: their text is left out;
    # only their names matter here.
    system.activationScripts = {
      users = "";
      groups = {
        deps = [ "users" ];
        text = "";
      };
      specialfs = "";
    };

    assertions = [
      # users-groups.nix.
      {
        assertion = !usersCfg.enforceIdUniqueness || (idsUnique usersCfg.users "uid" && idsUnique usersCfg.groups "gid");
        message = "UIDs and GIDs must be unique!";
      }
      {
        assertion = usersWithoutGroup == { };
        message = "The following users have a primary group that is undefined: ${lib.concatStringsSep " " (lib.attrNames usersWithoutGroup)}";
      }
    ]
    ++ userAssertions
    # activation-script.nix builds the activation script with lib.textClosureMap, which stops
    # evaluation at a dep naming no snippet; the skeleton reports it as an assertion instead.
    ++ map (missing: {
      assertion = false;
      message = "system.activationScripts.${missing.name}.deps names `${missing.dep}', which no activation script defines.";
    }) missingActivationDeps;
  }

    # default.nix `config`: the unit, its user and group (uid and gid from ids.nix).
    (lib.mkIf promCfg.enable {
      systemd.services.prometheus = {
        after = [ "network.target" ];
        wantedBy = [ "multi-user.target" ];
        serviceConfig = {
          CapabilityBoundingSet = [ "" ];
          DeviceAllow = [ "/dev/null rw" ];
          DevicePolicy = "strict";
          ExecStart = lib.getExe promCfg.package + joinArgs promArgs;
          LockPersonality = true;
          MemoryDenyWriteExecute = true;
          NoNewPrivileges = true;
          PrivateDevices = true;
          PrivateTmp = true;
          PrivateUsers = true;
          ProtectClock = true;
          ProtectControlGroups = true;
          ProtectHome = true;
          ProtectHostname = true;
          ProtectKernelLogs = true;
          ProtectKernelModules = true;
          ProtectKernelTunables = true;
          ProtectProc = "invisible";
          ProtectSystem = "full";
          RemoveIPC = true;
          Restart = "always";
          RestrictAddressFamilies = [
            "AF_INET"
            "AF_INET6"
            "AF_UNIX"
          ];
          RestrictNamespaces = true;
          RestrictRealtime = true;
          RestrictSUIDSGID = true;
          RuntimeDirectory = "prometheus";
          RuntimeDirectoryMode = "0700";
          StateDirectory = promCfg.stateDir;
          StateDirectoryMode = "0700";
          SystemCallArchitectures = "native";
          SystemCallFilter = [
            "@system-service"
            "~@privileged"
          ];
          User = "prometheus";
          WorkingDirectory = "/var/lib/${promCfg.stateDir}";
        };
      };
      users.groups.prometheus.gid = config.ids.gids.prometheus;
      users.users.prometheus = {
        description = "Prometheus daemon user";
        group = "prometheus";
        uid = config.ids.uids.prometheus;
      };
    })

    # exporters.nix mkExporterConf and node.nix serviceOpts (DynamicUser = false, so the
    # exporter gets a system user and group of its name).
    (lib.mkIf nodeCfg.enable {
      systemd.services.prometheus-node-exporter = lib.mkMerge [
        {
          after = [ "network.target" ];
          wantedBy = [ "multi-user.target" ];
          serviceConfig = {
            CapabilityBoundingSet = lib.mkDefault [ "" ];
            DeviceAllow = [ "" ];
            DynamicUser = lib.mkDefault true;
            Group = nodeCfg.group;
            LockPersonality = true;
            MemoryDenyWriteExecute = true;
            NoNewPrivileges = true;
            PrivateDevices = lib.mkDefault true;
            PrivateTmp = lib.mkDefault true;
            ProtectClock = lib.mkDefault true;
            ProtectControlGroups = true;
            ProtectHome = true;
            ProtectHostname = true;
            ProtectKernelLogs = true;
            ProtectKernelModules = true;
            ProtectKernelTunables = true;
            ProtectSystem = lib.mkDefault "strict";
            RemoveIPC = true;
            Restart = lib.mkDefault "always";
            RestrictAddressFamilies = [
              "AF_INET"
              "AF_INET6"
            ];
            RestrictNamespaces = true;
            RestrictRealtime = true;
            RestrictSUIDSGID = true;
            SystemCallArchitectures = "native";
            UMask = "0077";
            User = lib.mkDefault nodeCfg.user;
            WorkingDirectory = lib.mkDefault "/tmp";
          };
        }
        {
          serviceConfig = {
            DynamicUser = false;
            RuntimeDirectory = "prometheus-node-exporter";
            ExecStart = ''
              ${pkgs.prometheus-node-exporter}/bin/node_exporter \
                ${lib.concatMapStringsSep " " (x: "--collector." + x) nodeCfg.enabledCollectors} \
                ${lib.concatMapStringsSep " " (x: "--no-collector." + x) nodeCfg.disabledCollectors} \
                --web.listen-address ${nodeCfg.listenAddress}:${toString nodeCfg.port} ${lib.concatStringsSep " " nodeCfg.extraFlags}
            '';
            RestrictAddressFamilies =
              lib.optionals (collectorIsEnabled "logind" || collectorIsEnabled "systemd") [ "AF_UNIX" ]
              ++ lib.optionals (collectorIsEnabled "network_route" || collectorIsEnabled "wifi" || !collectorIsDisabled "netdev") [
                "AF_NETLINK"
              ];
            ProtectClock = collectorIsDisabled "timex";
            ProtectHome = true;
          };
        }
      ];
      users.groups.${nodeCfg.group} = lib.mkIf (nodeCfg.group == "node-exporter") { };
      users.users.${nodeCfg.user} = lib.mkIf (nodeCfg.user == "node-exporter") {
        inherit (nodeCfg) group;
        description = "Prometheus node exporter service user";
        isSystemUser = true;
      };
    })

    # grafana.nix `config`: the unit (simplified: only what the harness reads; nixpkgs adds its
    # own hardening, which bcm.monitoring replaces), its user and group (ids.nix).
    (lib.mkIf grafanaCfg.enable {
      systemd.services.grafana = {
        wantedBy = [ "multi-user.target" ];
        after = [ "networking.target" ];
        serviceConfig = {
          ExecStart = "${grafanaCfg.package}/bin/grafana server -homepath ${grafanaCfg.dataDir} -config ${grafanaIni}";
          WorkingDirectory = grafanaCfg.dataDir;
          User = "grafana";
          Restart = "on-failure";
          RuntimeDirectory = "grafana";
          RuntimeDirectoryMode = "0755";
          StateDirectory = "grafana";
          StateDirectoryMode = "0700";
        };
      };
      users.users.grafana = {
        uid = config.ids.uids.grafana;
        description = "Grafana user";
        home = grafanaCfg.dataDir;
        group = "grafana";
      };
      users.groups.grafana.gid = config.ids.gids.grafana;
    })

    # alertmanager.nix `config`.
    (lib.mkIf amCfg.enable {
      assertions = [
        {
          assertion = amCfg.configuration != null;
          message = "Can not enable alertmanager without a configuration. Set either the `configuration` or `configText` attribute.";
        }
      ];
      systemd.services.alertmanager = {
        wantedBy = [ "multi-user.target" ];
        after = [ "network-online.target" ];
        preStart = ''
          ${lib.getBin pkgs.envsubst}/bin/envsubst -o "/tmp/alert-manager-substituted.yaml" \
                                                   -i "${alertmanagerYml}"
        '';
        serviceConfig = {
          Restart = "always";
          StateDirectory = "alertmanager";
          DynamicUser = true;
          EnvironmentFile = lib.mkIf (amCfg.environmentFile != null) amCfg.environmentFile;
          WorkingDirectory = "/tmp";
          ExecStart = "${amCfg.package}/bin/alertmanager" + joinArgs amArgs;
          ExecReload = "${pkgs.coreutils}/bin/kill -HUP $MAINPID";
        };
      };
    })
  ];
}
