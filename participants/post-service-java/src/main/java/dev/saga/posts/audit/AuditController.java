package dev.saga.posts.audit;

import java.util.Map;

import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import org.springframework.core.NestedRuntimeException;
import org.springframework.dao.DataAccessException;
import org.springframework.http.ResponseEntity;
import org.springframework.transaction.TransactionException;
import org.springframework.web.bind.annotation.ExceptionHandler;
import org.springframework.web.bind.annotation.GetMapping;
import org.springframework.web.bind.annotation.PathVariable;
import org.springframework.web.bind.annotation.RequestParam;
import org.springframework.web.bind.annotation.RestController;

import dev.saga.posts.audit.AuditPages.FactsPage;
import dev.saga.posts.audit.AuditPages.LedgerPage;
import dev.saga.posts.audit.AuditPages.UnclaimedPage;
import dev.saga.posts.audit.AuditParameters.FactsQuery;
import dev.saga.posts.audit.AuditParameters.LedgerQuery;
import dev.saga.posts.audit.AuditParameters.UnclaimedQuery;

/**
 * The audit endpoints on the HTTP (metrics/health) port, as the Rust participant kit serves them
 * ({@code participants/kit/src/audit.rs}): {@code GET /audit/ledger}, {@code GET /audit/unclaimed}
 * and {@code GET /audit/facts/{set}}, read-only. Errors are JSON {@code {"error": "…"}}: 400 for a
 * bad parameter (named), 404 for an unknown fact set, 503 when the database fails, 500 for an
 * inbox record the ledger cannot express.
 */
@RestController
public class AuditController {

    private static final Logger log = LoggerFactory.getLogger(AuditController.class);

    private final AuditLedger ledger;

    public AuditController(AuditLedger ledger) {
        this.ledger = ledger;
    }

    /** {@code since} (RFC 3339, required), {@code until}, {@code after} (a cursor), {@code through} (a saga id), {@code limit}. */
    @GetMapping("/audit/ledger")
    public LedgerPage ledger(@RequestParam Map<String, String> params) {
        return ledger.page(LedgerQuery.parse(params));
    }

    /** {@code since} (required), {@code until}, {@code after} (the previous page's {@code next}), {@code limit}. */
    @GetMapping("/audit/unclaimed")
    public UnclaimedPage unclaimed(@RequestParam Map<String, String> params) {
        return ledger.unclaimed(UnclaimedQuery.parse(params));
    }

    /** {@code after} (a key, exclusive), {@code limit}; bad parameters are a 400 before an unknown set is a 404. */
    @GetMapping("/audit/facts/{set}")
    public FactsPage facts(@PathVariable String set, @RequestParam Map<String, String> params) {
        FactsQuery query = FactsQuery.parse(params);
        return ledger.facts(set, query);
    }

    @ExceptionHandler(AuditParameters.BadRequest.class)
    ResponseEntity<Map<String, String>> badRequest(AuditParameters.BadRequest e) {
        return error(e.status(), e.getMessage());
    }

    @ExceptionHandler({DataAccessException.class, TransactionException.class})
    ResponseEntity<Map<String, String>> database(NestedRuntimeException e) {
        log.warn("audit: the database failed: {}", e.getMessage());
        return error(503, "database: " + e.getMostSpecificCause().getMessage());
    }

    @ExceptionHandler(AuditLedger.CorruptRecord.class)
    ResponseEntity<Map<String, String>> corrupt(AuditLedger.CorruptRecord e) {
        log.error("audit: {}", e.getMessage());
        return error(500, e.getMessage());
    }

    private static ResponseEntity<Map<String, String>> error(int status, String message) {
        return ResponseEntity.status(status).body(Map.of("error", message));
    }
}
