"""Loan disbursement, the second reference flow: vet the application, book the loan, sign
the contract, pay the money out through a bank (an effect outside any database).

``docs/writing-a-flow.md`` builds it step by step.
"""
