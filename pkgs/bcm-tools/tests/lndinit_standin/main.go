// A stand-in for lndinit (github.com/lightninglabs/lndinit), which the module's lnd-init-wallet
// step runs: this machine's Go module proxy does not serve lndinit, so the sandbox tests build
// this instead, from LND's own aezeed package and the btcwallet LND v0.20.1 uses.
//
// It accepts exactly the commands and flags the module passes, with lndinit's meaning:
//
//	gen-seed                  prints a new 24-word aezeed mnemonic, words separated by one
//	                          space, no newline
//	init-wallet --network=N --secret-source=file --file.seed=F --file.wallet-password=P
//	            --init-type=file --init-file.output-wallet-dir=D
//	                          writes D/wallet.db from the seed in F, encrypted with the password
//	                          in P; refuses to overwrite an existing wallet
//
// Anything else is refused, so a flag the module adds without checking it against lndinit
// fails here too. The real lndinit runs in the VM tests.
package main

import (
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/btcsuite/btcd/chaincfg"
	"github.com/btcsuite/btcwallet/wallet"
	_ "github.com/btcsuite/btcwallet/walletdb/bdb"
	"github.com/lightningnetwork/lnd/aezeed"
)

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "lndinit stand-in: "+format+"\n", args...)
	os.Exit(1)
}

func genSeed() {
	var entropy [aezeed.EntropySize]byte
	if _, err := rand.Read(entropy[:]); err != nil {
		fail("entropy: %v", err)
	}
	seed, err := aezeed.New(aezeed.CipherSeedVersion, &entropy, time.Now())
	if err != nil {
		fail("seed: %v", err)
	}
	mnemonic, err := seed.ToMnemonic(nil)
	if err != nil {
		fail("mnemonic: %v", err)
	}
	fmt.Print(strings.Join(mnemonic[:], " "))
}

// readSecret reads a file the way lndinit's file secret source does: surrounding whitespace
// is not part of the secret.
func readSecret(path string) string {
	content, err := os.ReadFile(path)
	if err != nil {
		fail("input file %s missing: %v", path, err)
	}
	return strings.TrimSpace(string(content))
}

func initWallet(args []string) {
	required := map[string]string{"network": "", "secret-source": "", "file.seed": "", "file.wallet-password": "", "init-file.output-wallet-dir": ""}
	optional := map[string]string{"init-type": "file"}
	for _, arg := range args {
		name, value, ok := strings.Cut(strings.TrimPrefix(arg, "--"), "=")
		_, isRequired := required[name]
		_, isOptional := optional[name]
		if !ok || !strings.HasPrefix(arg, "--") || !(isRequired || isOptional) {
			fail("unknown flag %q", arg)
		}
		if isRequired {
			required[name] = value
		} else {
			optional[name] = value
		}
	}
	for name, value := range required {
		if value == "" {
			fail("--%s is required", name)
		}
	}
	if required["secret-source"] != "file" || optional["init-type"] != "file" {
		fail("only --secret-source=file and --init-type=file are stood in for")
	}
	params := map[string]*chaincfg.Params{
		"mainnet": &chaincfg.MainNetParams, "testnet": &chaincfg.TestNet3Params,
		"testnet3": &chaincfg.TestNet3Params, "regtest": &chaincfg.RegressionNetParams,
		"simnet": &chaincfg.SimNetParams,
	}[required["network"]]
	if params == nil {
		fail("Invalid value `%s` for option `--network`", required["network"])
	}

	var mnemonic aezeed.Mnemonic
	words := strings.Fields(readSecret(required["file.seed"]))
	if len(words) != aezeed.NumMnemonicWords {
		fail("seed has %d words, want %d", len(words), aezeed.NumMnemonicWords)
	}
	copy(mnemonic[:], words)
	seed, err := mnemonic.ToCipherSeed(nil)
	if err != nil {
		fail("seed: %v", err)
	}
	password := []byte(readSecret(required["file.wallet-password"]))

	dir := required["init-file.output-wallet-dir"]
	if _, err := os.Stat(filepath.Join(dir, wallet.WalletDBName)); err == nil {
		fail("wallet already exists in %s", dir)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		fail("%v", err)
	}
	// As LND creates a wallet from a cipher seed: the password is both the public and the
	// private passphrase, so LND can open it with the one password file.
	loader := wallet.NewLoader(params, dir, true, 10*time.Second, 0)
	if _, err := loader.CreateNewWallet(password, password, seed.Entropy[:], seed.BirthdayTime()); err != nil {
		fail("creating the wallet: %v", err)
	}
	if err := loader.UnloadWallet(); err != nil {
		fail("closing the wallet: %v", err)
	}
}

func main() {
	if len(os.Args) < 2 {
		fail("usage: lndinit gen-seed | init-wallet FLAGS")
	}
	switch os.Args[1] {
	case "gen-seed":
		if len(os.Args) != 2 {
			fail("gen-seed: the module passes no flags, and neither may anyone else here")
		}
		genSeed()
	case "init-wallet":
		initWallet(os.Args[2:])
	default:
		fail("unknown command %q", os.Args[1])
	}
}
