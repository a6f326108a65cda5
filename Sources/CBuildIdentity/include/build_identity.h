#ifndef WALSHIP_BUILD_IDENTITY_H
#define WALSHIP_BUILD_IDENTITY_H

/* The build walship was made from, as `walship --version` shows it: the commit and date the Makefile passes in
   WALSHIP_BUILD (through Package.swift), or "unknown" from a plain `swift build`. */
const char *walship_build_identity(void);

#endif
