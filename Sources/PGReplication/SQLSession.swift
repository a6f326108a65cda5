/// An ordinary (non-replication) connection for monitoring queries, on its own thread.
/// Connects lazily and reconnects after a failure.
public final class SQLSession: Sendable {
    private let owner = ConnectionThread()
    private let conninfo: Conninfo
    private let applicationName: String

    public init(conninfo: Conninfo, applicationName: String) {
        self.conninfo = conninfo
        self.applicationName = applicationName
    }

    public func query(_ sql: String, _ parameters: [String] = []) async throws -> [[String?]] {
        try await owner.run { [conninfo, applicationName] connection in
            if connection == nil || !(connection!.isConnected) {
                connection = try PGConnection(conninfo, replication: false, applicationName: applicationName)
            }
            do {
                return try connection!.query(sql, parameters)
            } catch let error as PostgresError where error.connectionLost {
                connection = nil
                throw error
            }
        }
    }

    public func close() async { await owner.close() }
}
