import Testing

@testable import PGReplication

@Suite struct PostgresErrorTests {
    @Test(arguments: [
        ("28000", true),  // no pg_hba.conf entry, role does not exist
        ("28P01", true),  // password authentication failed
        ("42501", true),  // must be superuser or replication role; permission denied
        ("3D000", true),  // database does not exist
        ("57P03", false),  // the database system is starting up
        ("53300", false),  // too many connections
        ("08006", false),  // connection failure
        ("0A000", false),
    ])
    func setUpProblemsAreReadFromTheSQLState(_ state: String, _ setUp: Bool) {
        #expect(PostgresError("any text", sqlState: state).isSetUpProblem == setUp)
    }

    /// The text alone decides nothing: a German server's "Passwort-Authentifizierung … fehlgeschlagen" counts as
    /// the same set-up problem, and an English message without a SQLSTATE counts as none.
    @Test func theMessageTextIsNotConsulted() {
        #expect(
            PostgresError("FATAL:  Passwort-Authentifizierung für Benutzer »walship« fehlgeschlagen", sqlState: "28P01")
                .isSetUpProblem)
        #expect(!PostgresError("password authentication failed for user \"walship\"").isSetUpProblem)
    }
}
