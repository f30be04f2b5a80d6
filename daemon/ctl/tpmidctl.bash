# bash completion for tpmidctl(1). Installed as
# /usr/share/bash-completion/completions/tpmidctl.
_tpmidctl() {
        local cur prev words cword
        _init_completion 2>/dev/null || {
                cur=${COMP_WORDS[COMP_CWORD]}
                prev=${COMP_WORDS[COMP_CWORD - 1]}
                words=("${COMP_WORDS[@]}")
                cword=$COMP_CWORD
        }
        local group=${words[1]:-} verb=${words[2]:-}

        # Options that take a file or a directory.
        case $prev in
        -c | --config | --owner-auth-file | --endorsement-auth-file)
                COMPREPLY=($(compgen -f -- "$cur"))
                return
                ;;
        --root)
                COMPREPLY=($(compgen -d -- "$cur"))
                return
                ;;
        --regid-format)
                COMPREPLY=($(compgen -W "hex base32" -- "$cur"))
                return
                ;;
        -o | --output)
                # check -o takes a format; config apply and support-bundle a file
                if [ "$group" = check ]; then
                        COMPREPLY=($(compgen -W "text json" -- "$cur"))
                else
                        COMPREPLY=($(compgen -f -- "$cur"))
                fi
                return
                ;;
        --tcti | --lifetime | --auth-key-index)
                return
                ;;
        esac

        if [ "$cword" -eq 1 ]; then
                COMPREPLY=($(compgen -W "tpm config system identity check support-bundle --help --version" -- "$cur"))
                return
        fi
        local verbs="" opts="--help"
        case $group in
        tpm)
                verbs="info import sign"
                opts="--help --json --tcti --config --owner-auth-file --endorsement-auth-file --regid-format --auth-key-index"
                ;;
        config)
                verbs="check apply"
                case $verb in
                check) opts="--help --config" ;;
                apply) opts="--help --config --output --no-reload --root" ;;
                esac
                ;;
        system)
                verbs="status logs reprovision restart stop set-log-level restore-aziot"
                case $verb in
                status) opts="--help --json" ;;
                set-log-level)
                        if [ "$cword" -eq 3 ]; then
                                COMPREPLY=($(compgen -W "error warn info debug trace" -- "$cur"))
                                return
                        fi
                        opts="--help"
                        ;;
                restore-aziot) opts="--help --root" ;;
                esac
                ;;
        identity)
                verbs="show token"
                opts="--help --json --lifetime"
                ;;
        check)
                opts="--help --json --output --list --warnings-as-errors --root"
                ;;
        support-bundle)
                opts="--help --output"
                ;;
        esac
        if [ "$cword" -eq 2 ] && [ -n "$verbs" ] && [[ $cur != -* ]]; then
                COMPREPLY=($(compgen -W "$verbs" -- "$cur"))
                return
        fi
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
}
complete -F _tpmidctl tpmidctl
