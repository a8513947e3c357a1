"""Disco's job API on Sphere: Disco programs run on Sector with ``disco.`` replaced by
``sector.disco.`` in their imports (issue 12).

    from sector.disco.core import Job, result_iterator

    def map(line, params):
        for word in line.split():
            yield word, 1

    def reduce(iter, params):
        from sector.disco.util import kvgroup
        for word, counts in kvgroup(sorted(iter)):
            yield word, sum(counts)

    job = Job().run(input=["/texts/chekhov.txt"], map=map, reduce=reduce)
    for word, count in result_iterator(job.wait()):
        print(word, count)

The layout is Disco 0.5's: ``core`` (``Disco``, ``Job``, ``result_iterator``), ``job``,
``util``, ``compat``, ``error``, ``worker`` (``Params``), ``worker.task_io`` (readers
and writers), ``worker.classic.func`` (the classic job functions) and
``worker.classic.worker`` (``Worker``: how a job's settings are resolved, and what a
map or reduce task does). How a job becomes one Sphere job is ``runtime``'s (the
client side) and ``worker.classic.tasks``'s (the UDFs on the nodes); what crosses to
the nodes is ``ship``'s.
"""
