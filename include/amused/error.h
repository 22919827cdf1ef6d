// amused::Error and its subclasses: the only exceptions the library throws on purpose.
// Messages name the file, key or flag, say "expected X, got Y", and give a hint where the fix is known.
#pragma once

#include <stdexcept>
#include <string>

namespace amused {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

// A config.json / model_index.json that is missing, malformed or of the wrong class.
class ConfigError : public Error {
 public:
  using Error::Error;
};

// A weight file that is missing, corrupt, or does not fit the model (missing/unexpected/mis-shaped keys).
class CheckpointError : public Error {
 public:
  using Error::Error;
};

// A caller-supplied value that is out of range or inconsistent (flags, request fields, shapes).
class InvalidArgument : public Error {
 public:
  using Error::Error;
};

// Something valid in principle that this build or this model does not support.
class Unsupported : public Error {
 public:
  using Error::Error;
};

// File-system or network failure (unreadable file, failed download, failed atomic write).
class IoError : public Error {
 public:
  using Error::Error;
};

// Work stopped because a progress callback asked to cancel.
class Cancelled : public Error {
 public:
  using Error::Error;
};

}  // namespace amused
