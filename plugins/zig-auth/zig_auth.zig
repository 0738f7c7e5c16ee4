//! zig-auth: a token authenticator for the mqtt-broker, world `authenticator` of
//! `mqtt-broker:plugin@0.2.0` (wit/v0.2/plugin.wit), written against the component model's
//! canonical ABI by hand: no generated bindings, no libc. The token logic is in token.zig.
//!
//! What the core module exports and imports (the names are fixed by the WIT; see
//! plugins/README.md, "Bring your own language"):
//!   export "mqtt-broker:plugin/lifecycle@0.2.0#init"                     (ptr, len) -> retptr
//!   export "cabi_post_mqtt-broker:plugin/lifecycle@0.2.0#init"           (retptr)
//!   export "mqtt-broker:plugin/authenticate@0.2.0#authenticate"          (7 x i32) -> retptr
//!   export "cabi_post_mqtt-broker:plugin/authenticate@0.2.0#authenticate" (retptr)
//!   export "cabi_realloc"                                                (old, old_len, align, new_len) -> ptr
//!   export "memory"
//!   import "mqtt-broker:plugin/host@0.2.0" "log"                         (level, ptr, len)
//!   import "mqtt-broker:plugin/types@0.2.0" "[method]client.peer-address" (handle, retptr)
//!   import "mqtt-broker:plugin/types@0.2.0" "[resource-drop]client"       (handle)
//! Built into a component by build.sh (`wasm-tools component embed` + `component new`).

const std = @import("std");
const token = @import("token.zig");

const gpa = std.heap.wasm_allocator;

// ---------------------------------------------------------------------------------------
// Memory: the host allocates in our memory through `cabi_realloc` (the strings and lists it
// passes in, and the results of the functions we import); those buffers are ours to free.
// What we return stays ours too: the host reads it, then calls the matching `cabi_post_*`.

fn cabiRealloc(old_ptr: ?[*]u8, old_len: usize, alignment: usize, new_len: usize) callconv(.c) ?[*]u8 {
    const a = std.mem.Alignment.fromByteUnits(alignment);
    if (new_len == 0) {
        if (old_ptr) |p| if (old_len != 0) gpa.rawFree(p[0..old_len], a, 0);
        // Any non-null, suitably aligned address will do for an empty buffer.
        return @ptrFromInt(alignment);
    }
    if (old_ptr == null or old_len == 0) {
        return gpa.rawAlloc(new_len, a, 0) orelse @trap();
    }
    const old = old_ptr.?[0..old_len];
    if (gpa.rawResize(old, a, new_len, 0)) return old.ptr;
    const fresh = gpa.rawAlloc(new_len, a, 0) orelse @trap();
    @memcpy(fresh[0..@min(old_len, new_len)], old[0..@min(old_len, new_len)]);
    gpa.rawFree(old, a, 0);
    return fresh;
}

/// Frees a buffer the host allocated through `cabi_realloc` (a string: alignment 1).
fn freeBytes(ptr: [*]u8, len: usize) void {
    if (len != 0) gpa.rawFree(ptr[0..len], .@"1", 0);
}

// ---------------------------------------------------------------------------------------
// Imports. A string argument is lowered as (pointer, length) into our memory; a result that
// does not fit one core value (a string is two) is written by the host to a "return
// pointer" we pass as the last argument.

const host = struct {
    extern "mqtt-broker:plugin/host@0.2.0" fn log(level: i32, ptr: [*]const u8, len: usize) void;
};
const types = struct {
    /// Writes the string (pointer at offset 0, length at offset 4) to `ret`; the string's
    /// bytes were allocated with our `cabi_realloc`.
    extern "mqtt-broker:plugin/types@0.2.0" fn @"[method]client.peer-address"(client: i32, ret: *[2]usize) void;
    /// Releases a handle. A borrowed handle an export receives must be released before the
    /// export returns, or the call traps ("borrow handles still remain at the end of the
    /// call").
    extern "mqtt-broker:plugin/types@0.2.0" fn @"[resource-drop]client"(client: i32) void;
};

const log_info: i32 = 2; // `log-level` is an enum: trace 0, debug 1, info 2, warn 3, error 4

fn logInfo(comptime fmt: []const u8, args: anytype) void {
    var buf: [256]u8 = undefined;
    // (Strings handed to the host must be valid UTF-8: a line too long is not cut, but left out.)
    const line = std.fmt.bufPrint(&buf, fmt, args) catch return;
    host.log(log_info, line.ptr, line.len);
}

// ---------------------------------------------------------------------------------------
// State. One instance serves many calls (globals persist between them), but the broker may
// run several instances of the plugin side by side: each gets its own `init`, and nothing
// here expects to see what another instance saw.

var settings: ?token.Settings = null;

/// Results are returned through this area (its address is the export's return value); the
/// host reads it before the next call into this instance.
var ret_area: [4]usize align(8) = undefined;

// ---------------------------------------------------------------------------------------
// lifecycle.init: func(config: list<tuple<string, string>>) -> result<_, string>

/// `tuple<string, string>` in memory: two (pointer, length) pairs, 16 bytes, alignment 4.
const ConfigPair = extern struct {
    key_ptr: [*]u8,
    key_len: usize,
    value_ptr: [*]u8,
    value_len: usize,
};

fn init(list_ptr: [*]ConfigPair, list_len: usize) callconv(.c) *[4]usize {
    const list = list_ptr[0..list_len];
    // The list and its strings were allocated for us by the host: free them once read.
    defer {
        for (list) |p| {
            freeBytes(p.key_ptr, p.key_len);
            freeBytes(p.value_ptr, p.value_len);
        }
        if (list_len != 0) gpa.rawFree(@as([*]u8, @ptrCast(list_ptr))[0 .. list_len * @sizeOf(ConfigPair)], .@"4", 0);
    }
    const pairs = gpa.alloc(token.Pair, list_len) catch @trap();
    defer gpa.free(pairs);
    for (list, pairs) |p, *out| out.* = .{ .key = p.key_ptr[0..p.key_len], .value = p.value_ptr[0..p.value_len] };

    if (settings) |*old| old.deinit();
    settings = null;
    // result<_, string>: discriminant byte at 0 (0 ok, 1 err), the error string at 4 and 8.
    switch (token.parse(gpa, pairs) catch @trap()) {
        .ok => |s| {
            settings = s;
            logInfo("{d} users, anonymous clients {s}", .{ s.userCount(), if (s.allow_anonymous) "allowed" else "refused" });
            ret_area[0] = 0;
        },
        .err => |message| {
            ret_area[0] = 1;
            ret_area[1] = @intFromPtr(message.ptr);
            ret_area[2] = message.len;
        },
    }
    return &ret_area;
}

/// Called by the host once it has copied init's result: frees the error message.
fn initPost(ret: *[4]usize) callconv(.c) void {
    if (@as(u8, @truncate(ret[0])) == 1) freeBytes(@ptrFromInt(ret[1]), ret[2]);
}

// ---------------------------------------------------------------------------------------
// authenticate.authenticate: func(client: borrow<client>, credentials: credentials) -> auth-outcome
//
// Parameters, flattened: the client handle, then `credentials` field by field, each
// option as (discriminant, pointer, length).
// Result `auth-outcome` (variant allow | deny(denial) | abstain), in the return area:
// tag byte at 0; for deny, `denial.reason` (an enum byte) at 4 and `denial.message` at 8
// (pointer) and 12 (length).

fn authenticate(
    client: i32,
    user_some: i32,
    user_ptr: [*]u8,
    user_len: usize,
    pass_some: i32,
    pass_ptr: [*]u8,
    pass_len: usize,
) callconv(.c) *[4]usize {
    // Last thing before returning: give the borrowed client handle back.
    defer types.@"[resource-drop]client"(client);
    const username: ?[]u8 = if (user_some != 0) user_ptr[0..user_len] else null;
    const password: ?[]u8 = if (pass_some != 0) pass_ptr[0..pass_len] else null;
    defer {
        if (username) |u| freeBytes(u.ptr, u.len);
        if (password) |p| freeBytes(p.ptr, p.len);
    }
    // The host calls `init` before any hook; trap (a failed call, answered per `on_error`)
    // rather than guess if it did not.
    const s: *const token.Settings = if (settings) |*s| s else @trap();
    switch (s.check(username, password)) {
        .allow => ret_area[0] = 0,
        .deny => |why| {
            // Ask the host for the peer address only now: a handle costs nothing until a
            // method is called on it.
            var peer: [2]usize = undefined;
            types.@"[method]client.peer-address"(client, &peer);
            const peer_bytes: [*]u8 = @ptrFromInt(peer[0]);
            defer freeBytes(peer_bytes, peer[1]);
            const message = token.denialMessage(gpa, why, username, peer_bytes[0..peer[1]]) catch @trap();
            ret_area[0] = 1;
            ret_area[1] = @backingInt(why.reason());
            ret_area[2] = @intFromPtr(message.ptr);
            ret_area[3] = message.len;
        },
    }
    return &ret_area;
}

/// Called by the host once it has copied authenticate's result: frees the denial message.
fn authenticatePost(ret: *[4]usize) callconv(.c) void {
    if (@as(u8, @truncate(ret[0])) == 1) freeBytes(@ptrFromInt(ret[2]), ret[3]);
}

comptime {
    @export(&cabiRealloc, .{ .name = "cabi_realloc" });
    @export(&init, .{ .name = "mqtt-broker:plugin/lifecycle@0.2.0#init" });
    @export(&initPost, .{ .name = "cabi_post_mqtt-broker:plugin/lifecycle@0.2.0#init" });
    @export(&authenticate, .{ .name = "mqtt-broker:plugin/authenticate@0.2.0#authenticate" });
    @export(&authenticatePost, .{ .name = "cabi_post_mqtt-broker:plugin/authenticate@0.2.0#authenticate" });
}
