// physmemd: the daemon. Parses flags into ServerOptions, starts the server, and serves until
// SIGTERM or SIGINT, then stops accepting, lets in-flight calls finish and exits 0
// (server/daemon_main.h).
#include "server/daemon_main.h"

int main(int argc, char** argv) { return physmem::DaemonMain(argc, argv, {}); }
