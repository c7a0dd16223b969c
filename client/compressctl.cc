// compressctl: command-line client for compressd. See cli.h; run
// `compressctl help` for the commands.
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "client/cli.h"

int main(int argc, char** argv) {
  compress::client::CliEnvironment env;
  if (const char* server = std::getenv("COMPRESS_SERVER")) env.server = server;
  if (const char* token = std::getenv("COMPRESS_TOKEN")) env.token = token;
  env.stdout_is_tty = isatty(STDOUT_FILENO) == 1;
  const std::vector<std::string> args(argv + 1, argv + argc);
  return compress::client::RunCli(args, env);
}
