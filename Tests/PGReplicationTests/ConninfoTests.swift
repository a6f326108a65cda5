import Testing

@testable import PGReplication

@Suite struct ConninfoTests {
    @Test func redactsSecrets() throws {
        let info = try Conninfo("host=db1 port=5433 user=walship password=s3cret sslpassword=x")
        #expect(info["host"] == "db1")
        #expect(!info.description.contains("s3cret"))
        #expect(!info.description.contains("password"))
        let uri = try Conninfo("postgresql://walship:hunter2@db1:5433/postgres")
        #expect(!uri.description.contains("hunter2"))
        #expect(uri["port"] == "5433")
    }

    @Test func recognisesTheServerItConnectsTo() throws {
        #expect(try Conninfo("host=127.0.0.1 port=7010 user=postgres").reaches(host: "127.0.0.1", port: 7010))
        #expect(try Conninfo("host=localhost port=7010").reaches(host: "127.0.0.1", port: 7010))
        #expect(try Conninfo("host=dr1 port=7010").reaches(host: "0.0.0.0", port: 7010))
        #expect(try Conninfo("host=db1,dr1 port=5432,7010").reaches(host: "dr1", port: 7010))
        #expect(try !Conninfo("host=db1,dr1 port=7010,5432").reaches(host: "dr1", port: 7010))
        #expect(try !Conninfo("host=127.0.0.1 port=5432").reaches(host: "127.0.0.1", port: 7010))
        #expect(try !Conninfo("host=primary.example port=7010").reaches(host: "127.0.0.1", port: 7010))
        #expect(try Conninfo("host=drhost port=7010").reaches(host: "10.0.0.5", port: 7010, localNames: ["drhost"]))
    }

    /// The conninfo of a standby on another host: its loopback is its own, and a wildcard listener takes only
    /// this host's names.
    @Test func fromAnotherHostOnlyThisHostsNamesLeadHere() throws {
        func remote(_ text: String, _ listen: String, _ names: [String] = ["dr-receiver", "10.0.0.5"]) throws -> Bool {
            try Conninfo(text).reaches(host: listen, port: 7010, localNames: names, loopbackIsLocal: false)
        }
        #expect(try !remote("host=127.0.0.1 port=7010", "127.0.0.1"))
        #expect(try !remote("host=localhost port=7010", "0.0.0.0"))
        #expect(try !remote("host=::1 port=7010", "::"))
        #expect(try !remote("host=/var/run/postgresql port=7010", "0.0.0.0"))
        #expect(try !remote("host=primary.example port=7010", "0.0.0.0"))
        #expect(try remote("host=DR-Receiver port=7010", "0.0.0.0"))
        #expect(try remote("host=10.0.0.5 port=7010", "10.0.0.5", []))
        #expect(try !remote("host=10.0.0.5 port=7011", "0.0.0.0"))
        #expect(try remote("host=127.0.0.1,dr-receiver port=7010", "0.0.0.0"))
    }

    @Test func loopbackHosts() {
        for host in ["localhost", "LOCALHOST", "127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"] {
            #expect(isLoopbackHost(host), "\(host)")
        }
        for host in ["10.0.0.5", "128.0.0.1", "127.0.0", "dr-receiver", "/var/run/postgresql", "::2"] {
            #expect(!isLoopbackHost(host), "\(host)")
        }
    }

    @Test func invalidConninfoHasAHint() {
        #expect(throws: Conninfo.ParseError.self) { try Conninfo("host=db1 nonsense") }
        do {
            _ = try Conninfo("host='unterminated")
            Issue.record("expected an error")
        } catch {
            #expect("\(error)".contains("hint"))
        }
    }

    @Test func synchronousStandbyNames() {
        #expect(SynchronousStandbyNames.includes("walship", name: "walship"))
        #expect(SynchronousStandbyNames.includes("FIRST 1 (other, \"WalShip\")", name: "walship"))
        #expect(SynchronousStandbyNames.includes("ANY 2 (*)", name: "walship"))
        #expect(!SynchronousStandbyNames.includes("walship2, other", name: "walship"))
        #expect(!SynchronousStandbyNames.includes("", name: "walship"))
    }
}
