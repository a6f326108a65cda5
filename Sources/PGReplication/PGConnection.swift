import CLibPQ
import WALCore

#if canImport(Glibc)
import Glibc
#endif

/// An error from PostgreSQL or libpq, with the server's SQLSTATE when there is one. Never includes a password.
public struct PostgresError: Error, CustomStringConvertible, Sendable {
    public var message: String
    public var sqlState: String?
    public var connectionLost: Bool

    public init(_ message: String, sqlState: String? = nil, connectionLost: Bool = false) {
        self.message = message
        self.sqlState = sqlState
        self.connectionLost = connectionLost
    }

    public var description: String { message }

    /// The server refused for a reason a retry does not mend: a login or role it does not accept, a missing
    /// privilege, a database that does not exist. Read from the SQLSTATE, which, unlike the message, does not
    /// depend on the server's `lc_messages`.
    public var isSetUpProblem: Bool {
        guard let sqlState else { return false }
        return sqlState.hasPrefix(SQLState.invalidAuthorizationClass)
            || [SQLState.insufficientPrivilege, SQLState.invalidCatalogName].contains(sqlState)
    }
}

/// The SQLSTATE codes walship tells apart (PostgreSQL's errcodes.txt).
public enum SQLState {
    /// Class 28: invalid authorization specification (no pg_hba.conf entry, password authentication failed,
    /// role does not exist).
    public static let invalidAuthorizationClass = "28"
    /// 42501, e.g. "must be superuser or replication role", "permission denied for function …".
    public static let insufficientPrivilege = "42501"
    /// 3D000: the database named in the conninfo does not exist.
    public static let invalidCatalogName = "3D000"
    /// 0A000, e.g. READ_REPLICATION_SLOT on a logical slot.
    public static let featureNotSupported = "0A000"
}

/// One libpq connection. libpq connections are not thread-safe: an instance is created, used and
/// finished on a single thread (see `ConnectionThread`), which is why it is deliberately not Sendable.
public final class PGConnection {
    let conn: OpaquePointer

    /// Connects (blocking). `replication` adds `replication=true` for a physical walsender connection;
    /// otherwise `dbname` defaults to `postgres` when the conninfo names none.
    public init(_ conninfo: Conninfo, replication: Bool, applicationName: String?) throws {
        var info = conninfo
        if replication {
            info["replication"] = "true"
        } else {
            info["replication"] = nil
            if info["dbname"] == nil { info["dbname"] = "postgres" }
        }
        if let applicationName { info["application_name"] = applicationName }
        if info["fallback_application_name"] == nil { info["fallback_application_name"] = "walship" }
        if info["connect_timeout"] == nil { info["connect_timeout"] = "10" }
        let keys = info.options.map { strdup($0.key) } + [nil]
        let values = info.options.map { strdup($0.value) } + [nil]
        defer {
            keys.forEach { free($0) }
            values.forEach { free($0) }
        }
        let connection = keys.map { UnsafePointer($0) }.withUnsafeBufferPointer { k in
            values.map { UnsafePointer($0) }.withUnsafeBufferPointer { v in
                PQconnectdbParams(k.baseAddress, v.baseAddress, 0)
            }
        }
        guard let connection else { throw PostgresError("libpq could not allocate a connection") }
        conn = connection
        // All stored properties are set, so deinit (PQfinish) runs when this throws.
        guard PQstatus(conn) == CONNECTION_OK else {
            throw PostgresError("could not connect to \(conninfo): \(Self.lastError(conn))", connectionLost: true)
        }
    }

    deinit { PQfinish(conn) }

    static func lastError(_ conn: OpaquePointer) -> String { String(cString: PQerrorMessage(conn)).trimmingNewlines() }

    public var errorMessage: String { Self.lastError(conn) }
    public var isConnected: Bool { PQstatus(conn) == CONNECTION_OK }
    public var serverVersion: Int { Int(PQserverVersion(conn)) }
    public var socket: Int32 { PQsocket(conn) }
    public var host: String { PQhost(conn).map { String(cString: $0) } ?? "" }
    public var port: String { PQport(conn).map { String(cString: $0) } ?? "" }

    public func parameterStatus(_ name: String) -> String? { PQparameterStatus(conn, name).map { String(cString: $0) } }

    /// Runs one command through the simple query protocol (the only one a walsender accepts) and returns its rows.
    @discardableResult
    public func query(_ sql: String) throws -> [[String?]] {
        guard let result = PQexec(conn, sql) else { throw PostgresError(errorMessage, connectionLost: !isConnected) }
        defer { PQclear(result) }
        switch PQresultStatus(result) {
        case PGRES_TUPLES_OK, PGRES_COMMAND_OK:
            return Self.rows(result)
        default:
            throw Self.error(from: result, conn: conn)
        }
    }

    /// Runs a parameterised SQL query (ordinary connections only).
    public func query(_ sql: String, _ parameters: [String]) throws -> [[String?]] {
        let copies = parameters.map { strdup($0) }
        defer { copies.forEach { free($0) } }
        let result = copies.map { UnsafePointer($0) }.withUnsafeBufferPointer { values in
            PQexecParams(conn, sql, Int32(parameters.count), nil, values.baseAddress, nil, nil, 0)
        }
        guard let result else { throw PostgresError(errorMessage, connectionLost: !isConnected) }
        defer { PQclear(result) }
        switch PQresultStatus(result) {
        case PGRES_TUPLES_OK, PGRES_COMMAND_OK: return Self.rows(result)
        default: throw Self.error(from: result, conn: conn)
        }
    }

    static func rows(_ result: OpaquePointer) -> [[String?]] {
        (0..<PQntuples(result)).map { row in
            (0..<PQnfields(result)).map { column in
                PQgetisnull(result, row, column) == 1 ? nil : String(cString: PQgetvalue(result, row, column))
            }
        }
    }

    static func error(from result: OpaquePointer, conn: OpaquePointer) -> PostgresError {
        let message = String(cString: PQresultErrorMessage(result)).trimmingNewlines()
        let state = PQresultErrorField(result, Int32(UInt8(ascii: "C"))).map { String(cString: $0) }
        return PostgresError(
            message.isEmpty ? lastError(conn) : message, sqlState: state,
            connectionLost: PQstatus(conn) != CONNECTION_OK)
    }

    // MARK: - Multi-result commands (BASE_BACKUP)

    public enum Step {
        case rows([[String?]])
        case commandOK
        case copyOut
        case done
    }

    public func send(_ command: String) throws {
        guard PQsendQuery(conn, command) == 1 else { throw PostgresError(errorMessage, connectionLost: !isConnected) }
    }

    /// The next result of a command sent with `send(_:)`.
    public func nextResult() throws -> Step {
        guard let result = PQgetResult(conn) else { return .done }
        defer { PQclear(result) }
        switch PQresultStatus(result) {
        case PGRES_TUPLES_OK: return .rows(Self.rows(result))
        case PGRES_COMMAND_OK: return .commandOK
        case PGRES_COPY_OUT: return .copyOut
        default: throw Self.error(from: result, conn: conn)
        }
    }

    /// Blocking read of one CopyData message during COPY OUT; nil at the end of the copy.
    public func readCopyOut() throws -> [UInt8]? {
        var buffer: UnsafeMutablePointer<CChar>?
        let n = PQgetCopyData(conn, &buffer, 0)
        if n > 0, let buffer {
            defer { PQfreemem(buffer) }
            return Array(UnsafeRawBufferPointer(start: buffer, count: Int(n)))
        }
        if n == -1 { return nil }
        throw PostgresError("base backup stream failed: \(errorMessage)", connectionLost: !isConnected)
    }

    // MARK: - COPY BOTH streaming

    /// Sends START_REPLICATION and expects CopyBoth.
    public func startCopyBoth(_ command: String) throws {
        guard let result = PQexec(conn, command) else { throw PostgresError(errorMessage, connectionLost: !isConnected) }
        defer { PQclear(result) }
        guard PQresultStatus(result) == PGRES_COPY_BOTH else { throw Self.error(from: result, conn: conn) }
        guard PQsetnonblocking(conn, 1) == 0 else {
            throw PostgresError("could not make the connection non-blocking: \(errorMessage)")
        }
    }

    public enum CopyRead {
        case message(UnsafeMutablePointer<CChar>, Int)
        case wouldBlock
        case copyDone
    }

    /// Reads one buffered CopyData message without blocking. The caller frees `.message` with `freeCopyData(_:)`.
    public func readCopyData() throws -> CopyRead {
        var buffer: UnsafeMutablePointer<CChar>?
        let n = PQgetCopyData(conn, &buffer, 1)
        if n > 0, let buffer { return .message(buffer, Int(n)) }
        if n == 0 { return .wouldBlock }
        if n == -1 { return .copyDone }
        throw PostgresError("replication stream failed: \(errorMessage)", connectionLost: !isConnected)
    }

    /// Frees a message from `readCopyData()`; needs no connection, so any thread may call it.
    public static func freeCopyData(_ buffer: UnsafeMutablePointer<CChar>) { PQfreemem(buffer) }

    /// Reads what the socket has into libpq's buffer; call after poll says readable.
    public func consumeInput() throws {
        guard PQconsumeInput(conn) == 1 else {
            throw PostgresError("lost the replication connection: \(errorMessage)", connectionLost: true)
        }
    }

    /// Queues one CopyData message; returns false when libpq's buffer is full (try again after flushing).
    public func putCopyData(_ bytes: [UInt8]) throws -> Bool {
        let rc = bytes.withUnsafeBytes {
            PQputCopyData(conn, $0.baseAddress!.assumingMemoryBound(to: CChar.self), Int32($0.count))
        }
        if rc == -1 { throw PostgresError("could not send to the primary: \(errorMessage)", connectionLost: true) }
        return rc == 1
    }

    /// Tries to send queued output; returns true when everything went out.
    public func flush() throws -> Bool {
        let rc = PQflush(conn)
        if rc == -1 { throw PostgresError("could not send to the primary: \(errorMessage)", connectionLost: true) }
        return rc == 0
    }

    /// Ends our side of COPY after the server's CopyDone and collects the results that follow
    /// (at an end of timeline: next timeline and its start position).
    public func finishCopy() throws -> [[String?]] {
        _ = PQputCopyEnd(conn, nil)
        PQsetnonblocking(conn, 0)
        _ = PQflush(conn)
        var rows: [[String?]] = []
        while let result = PQgetResult(conn) {
            defer { PQclear(result) }
            switch PQresultStatus(result) {
            case PGRES_TUPLES_OK: rows = Self.rows(result)
            case PGRES_COMMAND_OK, PGRES_COPY_IN, PGRES_COPY_OUT, PGRES_COPY_BOTH: continue
            default: throw Self.error(from: result, conn: conn)
            }
        }
        return rows
    }
}

/// What a server answered to `PGConnection.ping` (libpq's `PQpingParams`).
public enum PingResult: Sendable, Hashable {
    /// It answered and would accept connections (a refused login is an answer too).
    case accepting
    /// It answered that it cannot accept connections now: starting up, shutting down, in crash recovery.
    case rejecting
    /// Nothing answered: connection refused, unreachable, or no PostgreSQL message within the connect timeout.
    case noResponse
    /// The conninfo could not be used for an attempt.
    case noAttempt

    /// Any PostgreSQL message came back.
    public var answered: Bool { self == .accepting || self == .rejecting }
}

extension PGConnection {
    /// Asks whether a server answers at `conninfo`, without logging in (blocking, at most about `connectTimeout`
    /// seconds per host; libpq takes no less than 2).
    public static func ping(_ conninfo: Conninfo, connectTimeout: Int = 2) -> PingResult {
        var info = conninfo
        info["replication"] = nil
        if info["dbname"] == nil { info["dbname"] = "postgres" }
        info["connect_timeout"] = String(max(2, connectTimeout))
        if info["fallback_application_name"] == nil { info["fallback_application_name"] = "walship" }
        let keys = info.options.map { strdup($0.key) } + [nil]
        let values = info.options.map { strdup($0.value) } + [nil]
        defer {
            keys.forEach { free($0) }
            values.forEach { free($0) }
        }
        let result = keys.map { UnsafePointer($0) }.withUnsafeBufferPointer { k in
            values.map { UnsafePointer($0) }.withUnsafeBufferPointer { v in
                PQpingParams(k.baseAddress, v.baseAddress, 0)
            }
        }
        switch result {
        case PQPING_OK: return .accepting
        case PQPING_REJECT: return .rejecting
        case PQPING_NO_RESPONSE: return .noResponse
        default: return .noAttempt
        }
    }
}
