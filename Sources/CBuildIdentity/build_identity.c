#include "build_identity.h"

/* Defined by Package.swift from the WALSHIP_BUILD environment variable. In C, not Swift: a Swift
   compilation condition cannot carry a string, and only this one file recompiles when the build changes. */
#ifndef WALSHIP_BUILD
#define WALSHIP_BUILD "unknown"
#endif

const char *walship_build_identity(void) { return WALSHIP_BUILD; }
