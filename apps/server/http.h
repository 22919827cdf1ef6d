// cpp-httplib as Debian builds it: libcpp-httplib-dev 0.11.4 is a compiled library (not the
// header-only upstream form) built with OpenSSL support, which adds a member to httplib::Request.
// Every translation unit must therefore see CPPHTTPLIB_OPENSSL_SUPPORT as the library was
// compiled (see cpp-httplib.pc). It is defined here rather than on the command line so the shared
// precompiled header stays valid for every target. (Its zlib and Brotli switches only add
// includes, so they are left out.)
#pragma once

#ifndef CPPHTTPLIB_OPENSSL_SUPPORT
#define CPPHTTPLIB_OPENSSL_SUPPORT
#endif
#include <httplib.h>
