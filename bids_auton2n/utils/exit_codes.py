"""Exit codes of every command, in one place.

They follow the BIDS execution specification (Table 7 of
https://github.com/bids-standard/execution-spec): BIDS-related codes 16-18 and the BSD
``sysexits`` codes 64-74.
"""

EXIT_FAILURE = 1  # some image(s) failed; the others are written
EXIT_INVALID_BIDS = 16  # the input dataset failed BIDS validation / is not a BIDS dataset
EXIT_UNKNOWN_LEVEL = 17  # unknown analysis level
EXIT_NOTHING_SELECTED = 18  # entity-based filtering options selected no files
EXIT_USAGE = 64  # the command was used incorrectly
EXIT_DATAERR = 65  # the input data was incorrect (e.g. an image that cannot be denoised)
EXIT_NOINPUT = 66  # the input data was missing or unreadable
EXIT_SOFTWARE = 70  # an internal error (e.g. corrupt expert weights)
EXIT_CANTCREAT = 73  # an output file/directory cannot be created
