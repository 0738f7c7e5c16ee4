//! The token check of zig-auth, free of the WebAssembly ABI so that `zig test token.zig`
//! runs it natively (see test.sh). `zig_auth.zig` wires it to the broker's interface.
//!
//! Config (the plugin's `config:` section, as `init` receives it):
//! - `tokens`: a JSON object mapping user names to their tokens, e.g. `{"alice": "s3cret"}`
//!   (a YAML map in the broker config arrives here as that JSON);
//! - `allow_anonymous`: `true` or `false` (default): whether a client without a user name
//!   may connect.
//! A client is allowed when the token of its user name equals its password.

const std = @import("std");
const Allocator = std.mem.Allocator;

/// One `config:` entry as the broker hands it over.
pub const Pair = struct {
    key: []const u8,
    value: []const u8,
};

/// The parsed config: every user's token, and whether anonymous clients may connect.
pub const Settings = struct {
    /// Owns the user names and tokens.
    arena: std.heap.ArenaAllocator,
    tokens: std.StringHashMapUnmanaged([]const u8),
    allow_anonymous: bool,

    pub fn deinit(self: *Settings) void {
        self.arena.deinit();
    }

    /// Decides on the credentials of a CONNECT.
    pub fn check(self: *const Settings, username: ?[]const u8, password: ?[]const u8) Verdict {
        const user = username orelse
            return if (self.allow_anonymous) .allow else .{ .deny = .no_username };
        const token = self.tokens.get(user) orelse {
            // Spend the same time as for a known user, so that the answer's timing does not
            // tell which user names exist.
            _ = constantTimeEql("unknown-user-placeholder-token", password orelse "");
            return .{ .deny = .unknown_user };
        };
        const given = password orelse return .{ .deny = .no_password };
        return if (constantTimeEql(token, given)) .allow else .{ .deny = .wrong_token };
    }

    pub fn userCount(self: *const Settings) usize {
        return self.tokens.count();
    }
};

/// Why a client is refused.
pub const Why = enum {
    no_username,
    unknown_user,
    no_password,
    wrong_token,

    /// The MQTT refusal: an anonymous client is not authorized (CONNACK 0x05), the others
    /// presented bad credentials (0x04).
    pub fn reason(why: Why) Reason {
        return switch (why) {
            .no_username => .not_authorized,
            else => .bad_credentials,
        };
    }

    pub fn text(why: Why) []const u8 {
        return switch (why) {
            .no_username => "no user name (anonymous clients are not allowed)",
            .unknown_user => "unknown user",
            .no_password => "no password",
            .wrong_token => "wrong token",
        };
    }
};

/// The interface's `deny-reason`, in its order.
pub const Reason = enum(u8) { bad_credentials = 0, not_authorized = 1 };

pub const Verdict = union(enum) {
    allow,
    deny: Why,
};

/// The answer of `parse`: the settings, or an error message for the broker (allocated with
/// the allocator given to `parse`; the caller frees it).
pub const Parsed = union(enum) {
    ok: Settings,
    err: []u8,
};

/// Parses the `config:` pairs. Only running out of memory is an error; a bad config is
/// `.err` with a message naming the key.
pub fn parse(gpa: Allocator, pairs: []const Pair) Allocator.Error!Parsed {
    var tokens_json: ?[]const u8 = null;
    var allow_anonymous = false;
    for (pairs) |p| {
        if (std.mem.eql(u8, p.key, "tokens")) {
            tokens_json = p.value;
        } else if (std.mem.eql(u8, p.key, "allow_anonymous")) {
            if (std.mem.eql(u8, p.value, "true")) {
                allow_anonymous = true;
            } else if (std.mem.eql(u8, p.value, "false")) {
                allow_anonymous = false;
            } else {
                return fail(gpa, "config key `allow_anonymous` must be true or false, not \"{s}\"", .{p.value});
            }
        } else {
            return fail(gpa, "unknown config key `{s}` (known: tokens, allow_anonymous)", .{p.key});
        }
    }
    const text = tokens_json orelse
        return fail(gpa, "config key `tokens` is required: a map of user name to token", .{});

    var settings = Settings{
        .arena = std.heap.ArenaAllocator.init(gpa),
        .tokens = .empty,
        .allow_anonymous = allow_anonymous,
    };
    const problem = readTokens(&settings, gpa, text) catch |e| {
        settings.deinit();
        return e;
    };
    if (problem) |message| {
        settings.deinit();
        return .{ .err = message };
    }
    return .{ .ok = settings };
}

/// Fills `settings.tokens` from the JSON `text`; returns an error message (allocated with
/// `gpa`) when the text is not a map of user name to non-empty token.
fn readTokens(settings: *Settings, gpa: Allocator, text: []const u8) Allocator.Error!?[]u8 {
    const arena = settings.arena.allocator();
    var scanner = std.json.Scanner.initCompleteInput(arena, text);
    var diagnostics = std.json.Scanner.Diagnostics{};
    scanner.enableDiagnostics(&diagnostics);
    const value = std.json.Value.jsonParse(arena, &scanner, .{
        .max_value_len = text.len,
        .allocate = .alloc_always,
    }) catch |e| {
        if (e == error.OutOfMemory) return error.OutOfMemory;
        return try std.fmt.allocPrint(gpa, "config key `tokens` is not valid JSON ({s} at line {d}, column {d})", .{
            @errorName(e), diagnostics.getLine(), diagnostics.getColumn(),
        });
    };
    // Nothing but white space may follow the value.
    const rest = scanner.peekNextTokenType() catch null;
    if (rest != .end_of_document) {
        return try std.fmt.allocPrint(gpa, "config key `tokens` is not valid JSON (trailing characters at line {d}, column {d})", .{
            diagnostics.getLine(), diagnostics.getColumn(),
        });
    }
    const object = switch (value) {
        .object => |o| o,
        else => return try std.fmt.allocPrint(gpa, "config key `tokens` must be a map of user name to token, not a JSON {s}", .{@tagName(value)}),
    };
    var it = object.iterator();
    while (it.next()) |entry| {
        const user = entry.key_ptr.*;
        const token = switch (entry.value_ptr.*) {
            .string => |s| s,
            else => |v| return try std.fmt.allocPrint(gpa, "the token of user \"{s}\" in `tokens` must be a string, not a JSON {s}", .{ user, @tagName(v) }),
        };
        if (token.len == 0) {
            return try std.fmt.allocPrint(gpa, "the token of user \"{s}\" in `tokens` is empty", .{user});
        }
        try settings.tokens.put(arena, user, token);
    }
    return null;
}

fn fail(gpa: Allocator, comptime fmt: []const u8, args: anytype) Allocator.Error!Parsed {
    return .{ .err = try std.fmt.allocPrint(gpa, fmt, args) };
}

/// Whether `given` equals `expected`, in a time that depends only on `expected.len` (and not
/// on where the first difference is), so that a client cannot guess a token byte by byte.
pub fn constantTimeEql(expected: []const u8, given: []const u8) bool {
    var diff: usize = expected.len ^ given.len;
    for (expected, 0..) |e, i| {
        // Reading past the end of a shorter `given` is replaced by a zero byte; the lengths
        // already differ, so the result is false either way.
        const g: u8 = if (i < given.len) given[i] else 0;
        diff |= e ^ g;
    }
    std.mem.doNotOptimizeAway(diff);
    return diff == 0;
}

/// The denial message for the broker's log (never sent to the client).
pub fn denialMessage(gpa: Allocator, why: Why, username: ?[]const u8, peer: []const u8) Allocator.Error![]u8 {
    if (username) |u| {
        const sep = if (why == .unknown_user) " " else " for user ";
        return std.fmt.allocPrint(gpa, "{s}{s}\"{s}\" from {s}", .{ why.text(), sep, u, peer });
    }
    return std.fmt.allocPrint(gpa, "{s}, from {s}", .{ why.text(), peer });
}

// ---------------------------------------------------------------------------------------
// Tests (`zig test token.zig`)

const testing = std.testing;

fn parseOk(pairs: []const Pair) !Settings {
    return switch (try parse(testing.allocator, pairs)) {
        .ok => |s| s,
        .err => |m| {
            defer testing.allocator.free(m);
            std.debug.print("unexpected config error: {s}\n", .{m});
            return error.TestUnexpectedResult;
        },
    };
}

fn expectConfigError(pairs: []const Pair, expected: []const u8) !void {
    switch (try parse(testing.allocator, pairs)) {
        .ok => |s| {
            var settings = s;
            settings.deinit();
            return error.TestExpectedError;
        },
        .err => |m| {
            defer testing.allocator.free(m);
            try testing.expectEqualStrings(expected, m);
        },
    }
}

test "the right token is accepted, any other is refused as bad credentials" {
    var s = try parseOk(&.{.{ .key = "tokens", .value = "{\"alice\": \"s3cret\", \"bob\": \"hunter2\"}" }});
    defer s.deinit();
    try testing.expectEqual(@as(usize, 2), s.userCount());
    try testing.expectEqual(Verdict.allow, s.check("alice", "s3cret"));
    try testing.expectEqual(Verdict.allow, s.check("bob", "hunter2"));
    try testing.expectEqual(Verdict{ .deny = .wrong_token }, s.check("alice", "hunter2"));
    try testing.expectEqual(Verdict{ .deny = .wrong_token }, s.check("alice", "s3cre"));
    try testing.expectEqual(Verdict{ .deny = .wrong_token }, s.check("alice", "s3cret!"));
    try testing.expectEqual(Verdict{ .deny = .wrong_token }, s.check("alice", ""));
    try testing.expectEqual(Verdict{ .deny = .no_password }, s.check("alice", null));
    try testing.expectEqual(Verdict{ .deny = .unknown_user }, s.check("carol", "s3cret"));
    try testing.expectEqual(Reason.bad_credentials, Why.wrong_token.reason());
    try testing.expectEqual(Reason.bad_credentials, Why.unknown_user.reason());
}

test "anonymous clients are refused as not authorized unless allowed" {
    var closed = try parseOk(&.{.{ .key = "tokens", .value = "{\"alice\": \"s3cret\"}" }});
    defer closed.deinit();
    try testing.expectEqual(Verdict{ .deny = .no_username }, closed.check(null, null));
    try testing.expectEqual(Verdict{ .deny = .no_username }, closed.check(null, "s3cret"));
    try testing.expectEqual(Reason.not_authorized, Why.no_username.reason());

    var open = try parseOk(&.{
        .{ .key = "allow_anonymous", .value = "true" },
        .{ .key = "tokens", .value = "{\"alice\": \"s3cret\"}" },
    });
    defer open.deinit();
    try testing.expectEqual(Verdict.allow, open.check(null, null));
    // Anonymous means no user name: a named client still needs its token.
    try testing.expectEqual(Verdict{ .deny = .wrong_token }, open.check("alice", "nope"));
}

test "tokens are binary-safe and compared whole" {
    var s = try parseOk(&.{.{ .key = "tokens", .value = "{\"u\": \"\\u00e9t\\u00e9 \\\"q\\\"\"}" }});
    defer s.deinit();
    try testing.expectEqual(Verdict.allow, s.check("u", "\xc3\xa9t\xc3\xa9 \"q\""));
    try testing.expectEqual(Verdict{ .deny = .wrong_token }, s.check("u", "\xc3\xa9t\xc3\xa9 \"q\"\x00"));
}

test "constant-time comparison" {
    try testing.expect(constantTimeEql("abc", "abc"));
    try testing.expect(constantTimeEql("", ""));
    try testing.expect(!constantTimeEql("abc", "abd"));
    try testing.expect(!constantTimeEql("abc", "ab"));
    try testing.expect(!constantTimeEql("abc", "abc\x00"));
    try testing.expect(!constantTimeEql("ab", "abc"));
    try testing.expect(!constantTimeEql("", "a"));
    try testing.expect(!constantTimeEql("a", ""));
}

test "config errors name the key and the problem" {
    try expectConfigError(&.{}, "config key `tokens` is required: a map of user name to token");
    try expectConfigError(
        &.{.{ .key = "tokens", .value = "{\"alice\": " }},
        "config key `tokens` is not valid JSON (UnexpectedEndOfInput at line 1, column 11)",
    );
    try expectConfigError(
        &.{.{ .key = "tokens", .value = "{alice: 1}" }},
        "config key `tokens` is not valid JSON (SyntaxError at line 1, column 2)",
    );
    try expectConfigError(
        &.{.{ .key = "tokens", .value = "{\"a\": \"b\"} x" }},
        "config key `tokens` is not valid JSON (trailing characters at line 1, column 12)",
    );
    try expectConfigError(
        &.{.{ .key = "tokens", .value = "[\"alice\"]" }},
        "config key `tokens` must be a map of user name to token, not a JSON array",
    );
    try expectConfigError(
        &.{.{ .key = "tokens", .value = "{\"alice\": 42}" }},
        "the token of user \"alice\" in `tokens` must be a string, not a JSON integer",
    );
    try expectConfigError(
        &.{.{ .key = "tokens", .value = "{\"alice\": \"\"}" }},
        "the token of user \"alice\" in `tokens` is empty",
    );
    try expectConfigError(
        &.{ .{ .key = "tokens", .value = "{}" }, .{ .key = "allow_anonymous", .value = "yes" } },
        "config key `allow_anonymous` must be true or false, not \"yes\"",
    );
    try expectConfigError(
        &.{ .{ .key = "tokens", .value = "{}" }, .{ .key = "token", .value = "x" } },
        "unknown config key `token` (known: tokens, allow_anonymous)",
    );
}

test "denial messages" {
    const m1 = try denialMessage(testing.allocator, .wrong_token, "alice", "127.0.0.1:5000");
    defer testing.allocator.free(m1);
    try testing.expectEqualStrings("wrong token for user \"alice\" from 127.0.0.1:5000", m1);
    const m3 = try denialMessage(testing.allocator, .unknown_user, "carol", "127.0.0.1:5001");
    defer testing.allocator.free(m3);
    try testing.expectEqualStrings("unknown user \"carol\" from 127.0.0.1:5001", m3);
    const m2 = try denialMessage(testing.allocator, .no_username, null, "[::1]:5000");
    defer testing.allocator.free(m2);
    try testing.expectEqualStrings("no user name (anonymous clients are not allowed), from [::1]:5000", m2);
}
