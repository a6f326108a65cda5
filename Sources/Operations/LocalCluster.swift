import Foundation
import PGReplication

/// A PostgreSQL cluster on this host, found through its data directory.
struct LocalCluster {
    let dataDirectory: String
    let owner: uid_t
    let group: gid_t
    let ownerName: String

    init(dataDirectory: String) throws {
        var st = stat()
        guard stat(dataDirectory, &st) == 0 else {
            throw PromoteError("cannot find the data directory \(dataDirectory): \(String(cString: strerror(errno)))")
        }
        guard FileManager.default.fileExists(atPath: dataDirectory + "/PG_VERSION") else {
            throw PromoteError("\(dataDirectory) is not a PostgreSQL data directory (no PG_VERSION)")
        }
        self.dataDirectory = dataDirectory
        owner = st.st_uid
        group = st.st_gid
        ownerName = getpwuid(st.st_uid).map { String(cString: $0.pointee.pw_name) } ?? "postgres"
    }

    /// The local socket of the running server, from postmaster.pid (line 4: port, line 5: socket directory).
    func socketConninfo() throws -> String {
        guard let text = try? String(contentsOfFile: dataDirectory + "/postmaster.pid", encoding: .utf8) else {
            throw PromoteError(
                "the server of \(dataDirectory) is not running (no postmaster.pid) (hint: start it with pg_ctl -D \(dataDirectory) start, or pass --standby CONNINFO)"
            )
        }
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        guard lines.count >= 5, let port = Int(lines[3].trimmingCharacters(in: .whitespaces)) else {
            throw PromoteError("\(dataDirectory)/postmaster.pid is incomplete; is the server still starting?")
        }
        let socketDirectory = lines[4].trimmingCharacters(in: .whitespaces)
        let host = socketDirectory.isEmpty ? "localhost" : socketDirectory
        return "host='\(host)' port=\(port) dbname=postgres user='\(ownerName)'"
    }

    /// Opens `session` as the cluster's owner (peer authentication on the local socket checks the
    /// connecting process's user), then returns to our own identity.
    func connect(_ session: SQLSession) async throws {
        let switched = geteuid() == 0 && owner != 0
        if switched {
            guard setegid(group) == 0, seteuid(owner) == 0 else {
                throw PromoteError("cannot act as \(ownerName) to connect: \(String(cString: strerror(errno)))")
            }
        }
        defer {
            if switched {
                _ = seteuid(0)
                _ = setegid(0)
            }
        }
        _ = try await session.query("SELECT 1")
    }
}
