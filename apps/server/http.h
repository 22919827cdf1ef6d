// cpp-httplib as Debian builds it: libcpp-httplib-dev 0.11.4 is a compiled library (not the
// header-only upstream form), built with OpenSSL, zlib and Brotli support. Those switches change
// the layout of httplib's types (Request has an SSL pointer), so every translation unit must see
// them exactly as the library was compiled (see
// /usr/lib/x86_64-linux-gnu/pkgconfig/cpp-httplib.pc). They are defined here rather than on the
// command line so the shared precompiled header stays valid for every target.
#pragma once

#ifndef CPPHTTPLIB_OPENSSL_SUPPORT
#define CPPHTTPLIB_OPENSSL_SUPPORT
#endif
#ifndef CPPHTTPLIB_ZLIB_SUPPORT
#define CPPHTTPLIB_ZLIB_SUPPORT
#endif
#ifndef CPPHTTPLIB_BROTLI_SUPPORT
#define CPPHTTPLIB_BROTLI_SUPPORT
#endif
#include <httplib.h>
