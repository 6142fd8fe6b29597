# Tor enforcement probed, not read off the units: bitcoind, LND and monerod run with
# `tor.enforce`, and a second host on the test network listens (its sshd). From inside each
# running unit's sandbox (its own cgroup, where systemd's IPAddressAllow/IPAddressDeny filters
# act on every socket, its mount and network namespaces, its user and group) a connection to
# the other host's addresses gets nowhere, not even a SYN: the other host's kernel counts no
# incoming connection. The same probe from outside the units, as root and as each unit's own
# user, reaches it, so the network is there and the unit's sandbox is what stops it. Tor's
# SOCKS port on loopback answers from inside each sandbox. (The test network has no Tor network:
# that a stream through Tor gets out is not tested.)
{
  lib,
  testDefaults,
  common,
}:
let
  storage = {
    fast = "/srv/fast";
    bulk = "/srv/bulk";
  };
  # The daemons that take Tor enforcement (lib/default.nix, mkTorOptions).
  peerDaemons = [
    "bitcoind"
    "lnd"
    "monerod"
  ];
  # What the other host listens on: sshd's port (nixpkgs' services.openssh.ports default,
  # opened in its firewall by openFirewall's default).
  outsidePort = 22;
in
{
  name = "bcm-tor-enforce";

  nodes = {
    guarded = {
      imports = [ testDefaults ];
      virtualisation = common.twoDiskTiers storage // {
        memorySize = 3072;
        cores = 2;
      };
      bcm = {
        network = "regtest";
        inherit storage;
        # tor.enforce follows bcm.tor.enforce, which follows bcm.tor.enable.
        tor.enable = true;
        bitcoind = {
          enable = true;
          dbcache = 50;
        };
        lnd = {
          enable = true;
          alias = "guarded";
        };
        monerod.enable = true;
      };
    };

    # A plain host with nothing of bcm: sshd answers on every address with its banner.
    outside.services.openssh.enable = true;
  };

  testScript =
    { nodes, ... }:
    let
      guarded = nodes.guarded.bcm;
      cfg = {
        nodes = lib.mapAttrs (_: common.serviceInfo) nodes;
        enforced = lib.filter (daemon: guarded.${daemon}.tor.enforce) peerDaemons;
        inherit peerDaemons outsidePort;
        outsideHost = nodes.outside.networking.hostName;
      };
    in
    ''
      ${common.pythonHelpers}

      cfg = json.loads(r"""${builtins.toJSON cfg}""")
      node = cfg["nodes"]["guarded"]
      tor = node["tor"]
      PORT = cfg["outsidePort"]
      require_service_checks(cfg["nodes"])
      assert cfg["enforced"] == cfg["peerDaemons"], f"tor.enforce is off for {set(cfg['peerDaemons']) - set(cfg['enforced'])}"


      def banner(address):
          """A bash command that connects to the other host's sshd and prints its banner's start."""
          return f"timeout 15 bash -c {shlex.quote(f'exec 3<>/dev/tcp/{address}/{PORT} && head -c 7 <&3')}"


      def incoming_connections():
          """Connections the other host's kernel has seen arrive at a listening socket: TCP's
          PassiveOpens, one for every SYN that reached a listener, over IPv4 and IPv6. Nothing
          else on that host is connected to over TCP."""
          header, values = [line.split() for line in outside.succeed("grep '^Tcp:' /proc/net/snmp").splitlines()]
          return int(values[header.index("PassiveOpens")])


      def in_unit(unit, command):
          """Runs the bash `command` inside the running unit's sandbox: moved into the unit's
          cgroup first, where systemd's BPF address filters apply to every socket made after, then
          into the unit's mount and network namespaces as its user and group. Returns the exit
          status and the output."""
          cgroup = guarded.succeed(f"systemctl show -p ControlGroup --value {unit}.service").strip()
          pid = guarded.succeed(f"systemctl show -p MainPID --value {unit}.service").strip()
          user = guarded.succeed(f"systemctl show -p User --value {unit}.service").strip()
          group = guarded.succeed(f"systemctl show -p Group --value {unit}.service").strip()
          assert cgroup and pid != "0" and user and group, f"{unit}: cgroup {cgroup!r}, pid {pid}, user {user!r}, group {group!r}"
          enter = (
              f"echo $$ > /sys/fs/cgroup{cgroup}/cgroup.procs"
              f" && exec nsenter --target {pid} --mount --net"
              f" --setuid $(id -u {user}) --setgid $(getent group {group} | cut -d: -f3)"
              f" -- bash -c {shlex.quote(command)}"
          )
          return guarded.execute(f"bash -c {shlex.quote(enter)} 2>&1")


      start_all()
      guarded.wait_for_unit("multi-user.target")
      outside.wait_for_unit("sshd.service")

      with subtest("the enforced daemons run, and the chain leaves its genesis block for LND"):
          lift_off_genesis(guarded, node)
          for unit in cfg["enforced"]:
              guarded.wait_for_unit(f"{unit}.service")
              guarded.log(f"{unit}: " + guarded.succeed(f"systemctl show -p IPAddressAllow -p IPAddressDeny {unit}.service"))

      # The other host as the guarded one resolves it (the test network's /etc/hosts): IPv4, and
      # IPv6 where the network gives it an address.
      addresses = sorted(set(guarded.succeed(f"getent ahosts {cfg['outsideHost']} | cut -d' ' -f1").split()))
      assert any("." in address for address in addresses), addresses
      assert not any(address.startswith("127.") or address == "::1" for address in addresses), addresses

      with subtest("outside the units the other host is reachable, as root and as each daemon's user"):
          for address in addresses:
              before = incoming_connections()
              assert guarded.succeed(banner(address)).startswith("SSH-2.0"), address
              assert incoming_connections() > before, f"{address}: the other host saw no connection"
          for unit in cfg["enforced"]:
              user = guarded.succeed(f"systemctl show -p User --value {unit}.service").strip()
              for address in addresses:
                  out = guarded.succeed(f"runuser -u {user} -- {banner(address)}")
                  assert out.startswith("SSH-2.0"), f"{user} -> {address}: {out!r}"

      for unit in cfg["enforced"]:
          with subtest(f"{unit}: nothing leaves its sandbox for the other host"):
              status, out = in_unit(unit, "cat /proc/self/cgroup; id -un")
              cgroup = guarded.succeed(f"systemctl show -p ControlGroup --value {unit}.service").strip()
              user = guarded.succeed(f"systemctl show -p User --value {unit}.service").strip()
              assert status == 0 and out.split() == [f"0::{cgroup}", user], f"the probe did not run in {unit}'s sandbox: {out!r}"
              for address in addresses:
                  before = incoming_connections()
                  status, out = in_unit(unit, banner(address))
                  guarded.log(f"{unit} -> {address}: exit {status}: {out.strip()}")
                  assert status != 0 and "SSH-" not in out, f"{unit} reached {address}: {out!r}"
                  assert incoming_connections() == before, f"a connection from {unit}'s sandbox reached {address}"

          with subtest(f"{unit}: Tor's SOCKS port answers from inside its sandbox"):
              status, out = in_unit(unit, socks5_greeting(tor["socksAddress"], tor["socksPort"]))
              assert status == 0 and out.strip() == "0500", f"{unit}: Tor's SOCKS port replied {out!r} (exit {status})"

      check_services(guarded, node)

      with subtest("no unit failed, not even one that Restart= brought back"):
          assert_no_unit_failed(guarded)
    '';
}
