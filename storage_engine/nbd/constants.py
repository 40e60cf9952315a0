"""Numbers of the NBD protocol, under the names the specification uses.

Source: NetworkBlockDevice/nbd ``doc/proto.md`` (the "Values" section and
the message layouts). Only the normative protocol is listed; experimental
extensions (EXTENDED_HEADERS, RESIZE) are named where their numbers are
reserved so that nobody reuses them, but nothing here implements them.
Plain integers rather than enums: these are compared on the data path and
written into headers with :mod:`struct`, where an ``int`` is what is wanted.
"""

# -- magic numbers ----------------------------------------------------------

#: ASCII 'NBDMAGIC', first 8 bytes the server sends (a.k.a. INIT_PASSWD).
NBDMAGIC = 0x4E42444D41474943
#: ASCII 'IHAVEOPT': newstyle greeting magic, and the prefix of every option.
IHAVEOPT = 0x49484156454F5054
#: Magic of every option reply in fixed newstyle negotiation.
NBD_REP_MAGIC = 0x0003E889045565A9
#: Oldstyle negotiation magic (``cliserv_magic``); never sent by this code.
NBD_CLISERV_MAGIC = 0x00420281861253

NBD_REQUEST_MAGIC = 0x25609513
NBD_SIMPLE_REPLY_MAGIC = 0x67446698
NBD_REPLY_MAGIC = NBD_SIMPLE_REPLY_MAGIC  # the spec's former name
NBD_STRUCTURED_REPLY_MAGIC = 0x668E33EF
#: Reserved for the experimental EXTENDED_HEADERS extension.
NBD_EXTENDED_REQUEST_MAGIC = 0x21E41C71
NBD_EXTENDED_REPLY_MAGIC = 0x6E8A278C

# -- handshake flags (16 bits, server -> client) ----------------------------

NBD_FLAG_FIXED_NEWSTYLE = 1 << 0
NBD_FLAG_NO_ZEROES = 1 << 1

# -- client flags (32 bits, client -> server) --------------------------------

NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0
NBD_FLAG_C_NO_ZEROES = 1 << 1

# -- transmission flags (16 bits) -------------------------------------------

NBD_FLAG_HAS_FLAGS = 1 << 0
NBD_FLAG_READ_ONLY = 1 << 1
NBD_FLAG_SEND_FLUSH = 1 << 2
NBD_FLAG_SEND_FUA = 1 << 3
NBD_FLAG_ROTATIONAL = 1 << 4
NBD_FLAG_SEND_TRIM = 1 << 5
NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6
NBD_FLAG_SEND_DF = 1 << 7
NBD_FLAG_CAN_MULTI_CONN = 1 << 8
NBD_FLAG_SEND_RESIZE = 1 << 9  # experimental RESIZE extension
NBD_FLAG_SEND_CACHE = 1 << 10
NBD_FLAG_SEND_FAST_ZERO = 1 << 11
NBD_FLAG_BLOCK_STATUS_PAYLOAD = 1 << 12  # experimental EXTENDED_HEADERS

# -- option types -----------------------------------------------------------

NBD_OPT_EXPORT_NAME = 1
NBD_OPT_ABORT = 2
NBD_OPT_LIST = 3
NBD_OPT_PEEK_EXPORT = 4  # withdrawn
NBD_OPT_STARTTLS = 5
NBD_OPT_INFO = 6
NBD_OPT_GO = 7
NBD_OPT_STRUCTURED_REPLY = 8
NBD_OPT_LIST_META_CONTEXT = 9
NBD_OPT_SET_META_CONTEXT = 10
NBD_OPT_EXTENDED_HEADERS = 11  # experimental

# -- option reply types -----------------------------------------------------

NBD_REP_ACK = 1
NBD_REP_SERVER = 2
NBD_REP_INFO = 3
NBD_REP_META_CONTEXT = 4

#: Every error reply type has bit 31 set.
NBD_REP_FLAG_ERROR = 1 << 31
NBD_REP_ERR_UNSUP = NBD_REP_FLAG_ERROR | 1
NBD_REP_ERR_POLICY = NBD_REP_FLAG_ERROR | 2
NBD_REP_ERR_INVALID = NBD_REP_FLAG_ERROR | 3
NBD_REP_ERR_PLATFORM = NBD_REP_FLAG_ERROR | 4
NBD_REP_ERR_TLS_REQD = NBD_REP_FLAG_ERROR | 5
NBD_REP_ERR_UNKNOWN = NBD_REP_FLAG_ERROR | 6
NBD_REP_ERR_SHUTDOWN = NBD_REP_FLAG_ERROR | 7
NBD_REP_ERR_BLOCK_SIZE_REQD = NBD_REP_FLAG_ERROR | 8
NBD_REP_ERR_TOO_BIG = NBD_REP_FLAG_ERROR | 9
NBD_REP_ERR_EXT_HEADER_REQD = NBD_REP_FLAG_ERROR | 10  # experimental

# -- NBD_REP_INFO information types -----------------------------------------

NBD_INFO_EXPORT = 0
NBD_INFO_NAME = 1
NBD_INFO_DESCRIPTION = 2
NBD_INFO_BLOCK_SIZE = 3

# -- request (command) types ------------------------------------------------

NBD_CMD_READ = 0
NBD_CMD_WRITE = 1
NBD_CMD_DISC = 2
NBD_CMD_FLUSH = 3
NBD_CMD_TRIM = 4
NBD_CMD_CACHE = 5
NBD_CMD_WRITE_ZEROES = 6
NBD_CMD_BLOCK_STATUS = 7
NBD_CMD_RESIZE = 8  # experimental RESIZE extension

# -- command flags (16 bits) ------------------------------------------------

NBD_CMD_FLAG_FUA = 1 << 0
NBD_CMD_FLAG_NO_HOLE = 1 << 1
NBD_CMD_FLAG_DF = 1 << 2
NBD_CMD_FLAG_REQ_ONE = 1 << 3
NBD_CMD_FLAG_FAST_ZERO = 1 << 4
NBD_CMD_FLAG_PAYLOAD_LEN = 1 << 5  # experimental EXTENDED_HEADERS

# -- structured reply flags and types ---------------------------------------

NBD_REPLY_FLAG_DONE = 1 << 0

NBD_REPLY_TYPE_NONE = 0
NBD_REPLY_TYPE_OFFSET_DATA = 1
NBD_REPLY_TYPE_OFFSET_HOLE = 2
NBD_REPLY_TYPE_BLOCK_STATUS = 5
NBD_REPLY_TYPE_BLOCK_STATUS_EXT = 6  # experimental EXTENDED_HEADERS
#: Every error chunk type has bit 15 set.
NBD_REPLY_TYPE_FLAG_ERROR = 1 << 15
NBD_REPLY_TYPE_ERROR = NBD_REPLY_TYPE_FLAG_ERROR | 1
NBD_REPLY_TYPE_ERROR_OFFSET = NBD_REPLY_TYPE_FLAG_ERROR | 2

# -- error values (the error field of replies) ------------------------------

NBD_EPERM = 1
NBD_EIO = 5
NBD_ENOMEM = 12
NBD_EINVAL = 22
NBD_ENOSPC = 28
NBD_EOVERFLOW = 75
NBD_ENOTSUP = 95
NBD_ESHUTDOWN = 108

# -- base:allocation metadata context ---------------------------------------

NBD_META_BASE_ALLOCATION = 'base:allocation'
NBD_STATE_HOLE = 1 << 0
NBD_STATE_ZERO = 1 << 1

# -- sizes ------------------------------------------------------------------

#: Strings (export names, messages, context names) MUST NOT exceed this.
NBD_MAX_STRING = 4096
#: Zero padding after the NBD_OPT_EXPORT_NAME reply without NO_ZEROES.
NBD_EXPORT_NAME_PADDING = 124
#: Defaults of the "Size constraints" section when nothing was advertised.
NBD_DEFAULT_MIN_BLOCK = 1
NBD_DEFAULT_PREFERRED_BLOCK = 4096
#: 2^25: the payload every server SHOULD accept (and no DoS below it).
NBD_DEFAULT_MAX_PAYLOAD = 1 << 25
#: Largest minimum block size a server may advertise (2^16).
NBD_MAX_MIN_BLOCK = 1 << 16
#: A server SHOULD NOT send more extents than this in one status chunk.
NBD_MAX_BLOCK_STATUS_EXTENTS = 1 << 20
#: Unfragmented (DF) reads up to this length MUST be supported.
NBD_DF_MIN_SUPPORTED = 65536
