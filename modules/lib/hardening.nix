# The one systemd hardening profile every bcm unit starts from, and the named relaxations a
# unit may add on top (`strict // loopbackOnly // { ... }`). Each relaxation says why it exists.
# The eval harness checks that every bcm unit keeps each `strict` setting unless it replaced it
# with the value of one of these relaxations.
rec {
  strict = {
    ProtectSystem = "strict";
    ProtectHome = true;
    PrivateTmp = true;
    PrivateDevices = true;
    PrivateMounts = true;
    ProtectProc = "invisible";
    ProcSubset = "pid";
    ProtectKernelTunables = true;
    ProtectKernelModules = true;
    ProtectKernelLogs = true;
    ProtectControlGroups = true;
    ProtectClock = true;
    ProtectHostname = true;
    NoNewPrivileges = true;
    RestrictSUIDSGID = true;
    RestrictNamespaces = true;
    RestrictRealtime = true;
    LockPersonality = true;
    MemoryDenyWriteExecute = true;
    RemoveIPC = true;
    CapabilityBoundingSet = "";
    AmbientCapabilities = "";
    RestrictAddressFamilies = [
      "AF_UNIX"
      "AF_INET"
      "AF_INET6"
    ];
    SystemCallArchitectures = "native";
    SystemCallFilter = [
      "@system-service"
      "~@privileged"
    ];
    SystemCallErrorNumber = "EPERM";
    IPAddressDeny = "any";
    UMask = "0077";
  };

  # Clients and peers on this host only (RPC clients, Tor's SOCKS port).
  loopbackOnly = {
    IPAddressAllow = [
      "127.0.0.0/8"
      "::1/128"
    ];
  };

  # Peer-to-peer daemons without Tor enforcement, and Tor itself, reach the internet.
  anyAddress = {
    IPAddressAllow = "any";
  };

  # The JVM (Kafka) compiles code at runtime into writable, executable memory.
  allowJit = {
    MemoryDenyWriteExecute = false;
  };

  # libzmq lists the interfaces (getifaddrs, over netlink) on every TCP bind and aborts when
  # netlink is refused: bitcoind's and monerod's ZMQ publishers need it.
  allowNetlink = {
    RestrictAddressFamilies = [
      "AF_UNIX"
      "AF_INET"
      "AF_INET6"
      "AF_NETLINK"
    ];
  };

  # Fulcrum sizes its caches from /proc/meminfo, which ProcSubset=pid hides.
  allowProcInfo = {
    ProcSubset = "all";
  };

  # The secrets generator runs as root to hand each secret to its owner.
  fileOwnership = {
    CapabilityBoundingSet = [
      "CAP_CHOWN"
      "CAP_FOWNER"
      "CAP_DAC_OVERRIDE"
      "CAP_DAC_READ_SEARCH"
    ];
    SystemCallFilter = [ "@system-service" ];
  };
}
