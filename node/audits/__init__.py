"""Farmers auditing each other: which chunks an auditor challenges (`choice`), the audit loop and
repair (`auditor`), the auditor's signed logs (`journal`), and what the logs say of a farmer
(`reputation`)."""
