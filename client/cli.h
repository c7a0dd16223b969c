// compressctl: the command-line front end of the client library.
//
// RunCli() is the whole program minus process plumbing (argv, environment,
// isatty), so tests drive it with string streams against an in-process
// server. compressctl.cc only fills a CliEnvironment and calls it.
//
// Exit codes: 0 success; 1 an RPC or local operation failed ("error: CODE:
// message" on stderr) or a watched job did not succeed; 2 a usage error.
#ifndef COMPRESS_CLIENT_CLI_H_
#define COMPRESS_CLIENT_CLI_H_

#include <iostream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/args.h"

namespace compress::client {

inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;

struct CliEnvironment {
  std::string server;            // $COMPRESS_SERVER; "" = localhost:50051
  std::string token;             // $COMPRESS_TOKEN; "" = none
  std::string ca;                // $COMPRESS_CA; "" = system roots (with --tls)
  std::string cert;              // $COMPRESS_CERT; "" = no client certificate
  std::string key;               // $COMPRESS_KEY
  std::string tls_server_name;   // $COMPRESS_TLS_SERVER_NAME; "" = the host
  bool stdout_is_tty = false;    // draw the watch progress bar in place
  std::istream* in = &std::cin;  // for "--spec-json -"
  std::ostream* out = &std::cout;
  std::ostream* err = &std::cerr;
};

// The command table and the flags, as shown by UsageText().
const std::vector<CommandDef>& Commands();
const std::vector<FlagDef>& Flags();
std::string UsageText();

// Parses args (without the program name) into a resolved command.
absl::StatusOr<Invocation> ParseCommandLine(
    const std::vector<std::string>& args);

// Runs one compressctl invocation; returns the exit code.
int RunCli(const std::vector<std::string>& args, const CliEnvironment& env);

}  // namespace compress::client

#endif  // COMPRESS_CLIENT_CLI_H_
