# make rpm [DIST=el9]   build fitsflow's RPMs for EL10 (or EL9) into build/rpm/RPMS
#                       (on Debian with rpm/macros.debian-fallback)
# make deps-rpm         the packages EL10 + EPEL 10 lack (rpm/deps/python-*.spec)
# make runtime-rpm      EL9's fitsflow-runtime (rpm/deps/fitsflow-runtime.spec)
# make activemq-rpm     EL's apache-activemq, from Apache's tarball in $(TOP)/SOURCES
# make lint    rpmlint the built RPMs
# make clean
VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' daemons/fitsflow/__init__.py)
TOP ?= $(CURDIR)/build/rpm
# RELEASE=2 make rpm: a newer release of the same version (the upgrade test uses it)
RELEASE ?= 1
TARBALL := $(TOP)/SOURCES/fitsflow-$(VERSION).tar.gz
# The release the packages are for: DIST=el10 (the default) or DIST=el9 (rpm/fitsflow.spec says
# how they differ). On EL the build host's own macros decide; on Debian these stand in for them.
DIST ?= el10
DIST_el10 := --define 'rhel 10' --define 'dist .el10' --define 'fitsflow_python3_version 3.12'
DIST_el9 := --define 'rhel 9' --define 'dist .el9'
ON_DEBIAN := $(wildcard /etc/debian_version)
# Debian's rpm has no systemd/python macros and its dpkg-installed build deps are unknown to rpm.
DEBIAN_FLAGS := $(if $(ON_DEBIAN),--nodeps --load $(CURDIR)/rpm/macros.debian-fallback --define 'fitsflow_rpmdir $(CURDIR)/rpm')
# %check runs the unit tests with an interpreter that has the dependencies: the project's venv if any.
CHECK_PYTHON := $(if $(wildcard .venv/bin/python),--define 'fitsflow_check_python $(CURDIR)/.venv/bin/python')

.PHONY: rpm deps-rpm runtime-rpm activemq-rpm lint clean tarball

tarball:
	mkdir -p $(TOP)/SOURCES
	git ls-files -co --exclude-standard | grep -v '^build/' | \
	    tar -czf $(TARBALL) --transform 's,^,fitsflow-$(VERSION)/,' -T -
	cp etc/sysusers.d/fitsflow.conf $(TOP)/SOURCES/fitsflow.sysusers
	cp etc/sysusers.d/activemq-fitsflow.conf $(TOP)/SOURCES/activemq-fitsflow.sysusers

rpm: tarball
	rpmbuild -ba $(DEBIAN_FLAGS) $(if $(ON_DEBIAN),$(DIST_$(DIST))) $(CHECK_PYTHON) --define '_topdir $(TOP)' \
	    --define 'fitsflow_release $(RELEASE)' rpm/fitsflow.spec

# The dependencies EL10 + EPEL 10 lack (rpm/deps/python-*.spec), from their PyPI sdists,
# checked against rpm/deps/sources. A compiled one (spead2) must be built by EL10's Python,
# 3.12: on Debian a venv of python3.12 (on PATH, else pyenv's) with what its build needs.
PYTHON_EL10 ?= $(shell for py in $$(command -v python3.12) $(HOME)/.pyenv/versions/3.12*/bin/python3.12 \
    /root/.pyenv/versions/3.12*/bin/python3.12; do "$$py" -c '' 2>/dev/null && { echo "$$py"; break; }; done)
EL10_BUILD_PYTHON := $(TOP)/el10-build-python/bin/python
# spead2 4.5.1's pyproject.toml [build-system] (pybind11 pinned there), numpy for its %check,
# and EL10's setuptools (69.0.3) with wheel for the others: what EL10 builds them with
EL10_BUILD_REQS := meson-python meson ninja pybind11==3.1.0 jinja2 pycparser packaging numpy setuptools==69.0.3 wheel
deps-rpm:
	rpm/fetch-sources rpm/deps/sources $(TOP)/SOURCES
ifneq ($(ON_DEBIAN),)
	@test -n "$(PYTHON_EL10)" || { echo "deps-rpm: EL10's spead2 is built by Python 3.12:" \
	    "put python3.12 on PATH or set PYTHON_EL10" >&2; exit 1; }
	test -x $(EL10_BUILD_PYTHON) || $(PYTHON_EL10) -m venv $(TOP)/el10-build-python
	$(EL10_BUILD_PYTHON) -m pip install --quiet $(EL10_BUILD_REQS)
endif
	for spec in rpm/deps/python-*.spec; do \
	    rpmbuild -ba $(DEBIAN_FLAGS) $(if $(ON_DEBIAN),$(DIST_el10) --define 'fitsflow_build_python $(EL10_BUILD_PYTHON)') \
	        --define '_topdir $(TOP)' $$spec || exit 1; done

# EL9's fitsflow-runtime (rpm/deps/fitsflow-runtime.spec): the files of the lock, downloaded and
# checked against its hashes, for EL9's python3.11 and glibc (2.34) whatever the build host.
RUNTIME_VERSION := $(shell sed -n 's/^Version: *//p' rpm/deps/fitsflow-runtime.spec)
EL9_PLATFORMS := $(foreach t,manylinux2014 manylinux_2_17 manylinux_2_24 manylinux_2_27 manylinux_2_28 manylinux_2_31 manylinux_2_34,--platform $(t)_x86_64)
runtime-rpm:
	rm -rf $(TOP)/runtime-download && mkdir -p $(TOP)/SOURCES $(TOP)/runtime-download
	python3 -m pip download --quiet --no-deps --require-hashes -r rpm/runtime/el9-requirements.txt \
	    $(EL9_PLATFORMS) --python-version 3.11 --implementation cp --abi cp311 --dest $(TOP)/runtime-download
	tar -czf $(TOP)/SOURCES/fitsflow-runtime-$(RUNTIME_VERSION).tar.gz -C $(TOP)/runtime-download .
	cp rpm/runtime/el9-requirements.txt $(TOP)/SOURCES/
	rpmbuild -ba $(DEBIAN_FLAGS) $(if $(ON_DEBIAN),$(DIST_el9)) --define '_topdir $(TOP)' rpm/deps/fitsflow-runtime.spec

# EL's apache-activemq (rpm/deps/apache-activemq.spec) from Apache's binary distribution, which
# must be in $(TOP)/SOURCES (it is not on PyPI or in Debian; see the spec).
ACTIVEMQ_VERSION ?= 5.18.6
activemq-rpm:
	@test -s $(TOP)/SOURCES/apache-activemq-$(ACTIVEMQ_VERSION)-bin.tar.gz || { echo \
	    "put apache-activemq-$(ACTIVEMQ_VERSION)-bin.tar.gz (Apache's download, sha512 checked) in $(TOP)/SOURCES" >&2; exit 1; }
	rpmbuild -ba $(DEBIAN_FLAGS) $(if $(ON_DEBIAN),$(DIST_$(DIST))) --define '_topdir $(TOP)' \
	    --define 'activemq_version $(ACTIVEMQ_VERSION)' rpm/deps/apache-activemq.spec

lint:
	rpmlint -r rpm/rpmlintrc rpm/fitsflow.spec $(wildcard $(TOP)/RPMS/*/*.rpm) $(TOP)/SRPMS/*.rpm

clean:
	rm -rf build
