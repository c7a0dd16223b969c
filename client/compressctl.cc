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
  if (const char* ca = std::getenv("COMPRESS_CA")) env.ca = ca;
  if (const char* cert = std::getenv("COMPRESS_CERT")) env.cert = cert;
  if (const char* key = std::getenv("COMPRESS_KEY")) env.key = key;
  if (const char* name = std::getenv("COMPRESS_TLS_SERVER_NAME")) env.tls_server_name = name;
  env.stdout_is_tty = isatty(STDOUT_FILENO) == 1;
  const std::vector<std::string> args(argv + 1, argv + argc);
  return compress::client::RunCli(args, env);
}
